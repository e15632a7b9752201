"""A worked extension: Mult-VAE with a LayerNorm + swish encoder (a RecVAE-style tweak).

Registers the model 'swish_vae' with vaecf's registry; the trainer, checkpoints,
evaluator and recommender are used unchanged. Run it with

  python -m vaecf.main --config=configs/default.py --workdir=/tmp/swish \
      --config.model.module=experiments.swish_vae --config.model.name=swish_vae

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


def encode(params, x, key=None, *, dropout_rate=0.5):
  v = nn.normalized_input(x, key, dropout_rate)
  h = nn.sparse_dense(params['encoder'][0], x, v)
  mean = h.mean(-1, keepdims=True)
  h = (h - mean) * jax.lax.rsqrt(h.var(-1, keepdims=True) + 1e-5)
  h = jax.nn.swish(h * params['norm']['scale'] + params['norm']['shift'])
  mu, logvar = jnp.split(nn.dense(params['encoder'][1], h), 2, axis=1)
  return mu, logvar


def loss(params, x, key, beta, *, dropout_rate):
  k_drop, k_eps = jax.random.split(key)
  mu, logvar = encode(params, x, k_drop, dropout_rate=dropout_rate)
  z = vae.sample(k_eps, mu, logvar, x.user_pos)
  nll = -likelihoods.multinomial(vae.decode(params, z), x)
  kl = vae.kl_divergence(mu, logvar)
  return nll + beta * kl, {'nll': nll, 'kl': kl}


def score(params, x):
  return vae.decode(params, encode(params, x)[0])


@models.register('swish_vae')
def make(config, n_items: int) -> models.Model:
  hidden = models.hidden_dims(config, (600,))[0]
  return models.Model(
      name='swish_vae',
      init=lambda key: init(key, n_items, hidden, config.model.latent_dim),
      loss=functools.partial(loss, dropout_rate=config.model.dropout_rate),
      score=score, uses_beta=True)
