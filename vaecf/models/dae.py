"""Mult-DAE (docs/protocol.md): a denoising autoencoder [I -> 200 -> I] with an L2 weight penalty."""
from __future__ import annotations

import jax.numpy as jnp

from vaecf.models import likelihoods, nn
from vaecf.sparse import SparseRows


def init(key, n_items: int, hidden_dims=(), latent_dim: int = 200) -> nn.Params:
  """Encoder [I, *hidden, K] and decoder [K, *reversed(hidden), I]."""
  return nn.init_autoencoder(key, n_items, hidden_dims, latent_dim, latent_dim)


def forward(params, x: SparseRows, key=None, *, dropout_rate: float = 0.5, dtype=None,
           input_layer: str = 'sparse'):
  """Logits; tanh after every layer but the last, as the authors' MultDAE."""
  layers = params['encoder']
  v = nn.normalized_input(x, key, dropout_rate)
  h = jnp.tanh(nn.first_layer(input_layer)(layers[0], x, v, dtype))
  h = nn.mlp(layers[1:], h, final_activation=True, dtype=dtype) if len(layers) > 1 else h
  return nn.mlp(params['decoder'], h, dtype=dtype)


def loss(params, x: SparseRows, key, beta, *, dropout_rate: float = 0.5,
         likelihood: str = 'multinomial', dtype=None, input_layer: str = 'sparse'):
  """Per-user negative log-likelihood; beta is accepted and ignored (no KL term)."""
  del beta
  logits = forward(params, x, key, dropout_rate=dropout_rate, dtype=dtype,
                   input_layer=input_layer)
  nll = -likelihoods.get(likelihood)(logits, x)
  return nll, {'nll': nll, 'kl': jnp.zeros_like(nll)}


def score(params, x: SparseRows, *, dtype=None, input_layer: str = 'sparse'):
  return forward(params, x, None, dtype=dtype, input_layer=input_layer)
