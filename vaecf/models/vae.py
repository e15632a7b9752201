"""Mult-VAE (docs/protocol.md): encoder, reparameterisation, decoder and the negative ELBO."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vaecf.models import likelihoods, nn
from vaecf.sparse import SparseRows


def init(key, n_items: int, hidden_dims=(600,), latent_dim: int = 200) -> nn.Params:
  """Encoder [I, *hidden, 2K] (mu and logvar) and decoder [K, *reversed(hidden), I]."""
  return nn.init_autoencoder(key, n_items, hidden_dims, latent_dim, 2 * latent_dim)


def encode(params, x: SparseRows, key=None, *, dropout_rate: float = 0.5, dtype=None,
           input_layer: str = 'sparse'):
  """(mu_BxK, logvar_BxK); `key=None` is evaluation mode (no dropout)."""
  layers = params['encoder']
  v = nn.normalized_input(x, key, dropout_rate)
  h = nn.first_layer(input_layer)(layers[0], x, v, dtype)
  if len(layers) > 1:
    h = nn.mlp(layers[1:], jnp.tanh(h), dtype=dtype)
  mu, logvar = jnp.split(h, 2, axis=1)
  return mu, logvar


def sample(key, mu_BxK, logvar_BxK, user_pos_B):
  """z = mu + eps * std with eps keyed on each user's position in the global batch."""
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, user_pos_B.astype(jnp.uint32))
  eps = jax.vmap(lambda k: jax.random.normal(k, mu_BxK.shape[1:]))(keys)
  return mu_BxK + eps * jnp.exp(0.5 * logvar_BxK)


def decode(params, z_BxK, *, dtype=None):
  return nn.mlp(params['decoder'], z_BxK, dtype=dtype)


def prior_mean_scores(params, *, latent_dim: int, dtype=None):
  """Logits [I] of the decoder at z = 0, the prior mean: the ranking for an empty history."""
  return decode(params, jnp.zeros((1, latent_dim), jnp.float32), dtype=dtype)[0]


def kl_divergence(mu_BxK, logvar_BxK):
  """KL(N(mu, diag exp(logvar)) || N(0, I)) per user."""
  return 0.5 * jnp.sum(-logvar_BxK + jnp.exp(logvar_BxK) + mu_BxK ** 2 - 1.0, axis=1)


def loss(params, x: SparseRows, key, beta, *, dropout_rate: float = 0.5,
         likelihood: str = 'multinomial', dtype=None, input_layer: str = 'sparse'):
  """Per-user negative ELBO terms: (nll_B + beta * kl_B, {'nll': nll_B, 'kl': kl_B})."""
  k_drop, k_eps = jax.random.split(key)
  mu, logvar = encode(params, x, k_drop, dropout_rate=dropout_rate, dtype=dtype,
                      input_layer=input_layer)
  z = sample(k_eps, mu, logvar, x.user_pos)
  nll = -likelihoods.get(likelihood)(decode(params, z, dtype=dtype), x)
  kl = kl_divergence(mu, logvar)
  return nll + beta * kl, {'nll': nll, 'kl': kl}


def score(params, x: SparseRows, *, dtype=None, input_layer: str = 'sparse'):
  """Logits for all items from the posterior mean (the paper's fold-in)."""
  mu, _ = encode(params, x, None, dtype=dtype, input_layer=input_layer)
  return decode(params, mu, dtype=dtype)
