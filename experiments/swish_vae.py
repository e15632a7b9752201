"""A worked extension: Mult-VAE with a LayerNorm + swish encoder (a RecVAE-style tweak).

Registers the model 'swish_vae' with vaecf's registry, with the config keys it reads and
their defaults; the trainer, checkpoints, evaluator and recommender are used unchanged.
Its config is configs/swish_vae.py; run it from the checkout with

  vaecf-train --config=configs/swish_vae.py:ml-latest-small --workdir=/tmp/swish \
      [--config.model.layer_norm_eps=1e-3]

Only the encoder differs from vaecf.models.vae: the sampling, decoder, KL and
likelihood are reused, so the comparison isolates the encoder change.
"""
import functools

import jax
import jax.numpy as jnp

from vaecf import models
from vaecf.models import likelihoods, nn, vae


def init(key, n_items: int, hidden: int, latent: int):
  params = vae.init(key, n_items, (hidden,), latent)
  params['norm'] = {'scale': jnp.ones(hidden), 'shift': jnp.zeros(hidden)}
  return params


def encode(params, x, key=None, *, dropout_rate=0.5, eps=1e-5):
  v = nn.normalized_input(x, key, dropout_rate)
  h = nn.sparse_dense(params['encoder'][0], x, v)
  mean = h.mean(-1, keepdims=True)
  h = (h - mean) * jax.lax.rsqrt(h.var(-1, keepdims=True) + eps)
  h = jax.nn.swish(h * params['norm']['scale'] + params['norm']['shift'])
  mu, logvar = jnp.split(nn.dense(params['encoder'][1], h), 2, axis=1)
  return mu, logvar


def loss(params, x, key, beta, *, dropout_rate, eps):
  k_drop, k_eps = jax.random.split(key)
  mu, logvar = encode(params, x, k_drop, dropout_rate=dropout_rate, eps=eps)
  z = vae.sample(k_eps, mu, logvar, x.user_pos)
  nll = -likelihoods.multinomial(vae.decode(params, z), x)
  kl = vae.kl_divergence(mu, logvar)
  return nll + beta * kl, {'nll': nll, 'kl': kl}


def score(params, x, *, eps):
  return vae.decode(params, encode(params, x, eps=eps)[0])


# Every key the model reads beyond vaecf's base config, with its default: configs start
# from these, so --config.model.layer_norm_eps works on any dataset preset.
@models.register('swish_vae', model={'hidden_dims': (600,), 'layer_norm_eps': 1e-5})
def make(config, n_items: int) -> models.Model:
  m = config.model
  hidden = models.hidden_dims(config, (600,))[0]
  return models.Model(
      name='swish_vae',
      init=lambda key: init(key, n_items, hidden, m.latent_dim),
      loss=functools.partial(loss, dropout_rate=m.dropout_rate, eps=m.layer_norm_eps),
      score=functools.partial(score, eps=m.layer_norm_eps), uses_beta=True)
