"""EASE (Steck 2019): closed-form item-item weights with a zero diagonal.

  P = (X^T X + lam I)^-1,  B = I - P diag(1 / diag(P)),  scores = x B.

Needs the dense I x I Gram matrix (fine up to I ~ 30k on an accelerator, 3.6 GB in
float32); the solve runs in float32 through a Cholesky factorisation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

# lam spans the values Steck reports for ML-20M / Netflix (~500-1000) and below, since
# ML-1M has ~20x fewer users and the Gram matrix scales with the number of users.
GRID = tuple({'lam': v} for v in (100.0, 250.0, 500.0, 1000.0, 2000.0))


def gram(train: sp.csr_matrix) -> np.ndarray:
  """X^T X as dense float32 (computed sparse: never a dense users x items matrix)."""
  x = sp.csr_matrix(train, dtype=np.float32)
  return np.asarray((x.T @ x).toarray(), np.float32)


@jax.jit
def ease_weights(gram_IxI, lam):
  """B with B_jj = 0 from the Gram matrix, as docs/protocol.md's closed form."""
  n = gram_IxI.shape[0]
  eye = jnp.eye(n, dtype=gram_IxI.dtype)
  factor = jax.scipy.linalg.cho_factor(gram_IxI + lam * eye)
  p_IxI = jax.scipy.linalg.cho_solve(factor, eye)
  b_IxI = -p_IxI / jnp.diag(p_IxI)[None, :]
  return jnp.where(eye > 0, 0.0, b_IxI)


def fit(train: sp.csr_matrix, hparams: dict, validation=None) -> tuple[dict, dict]:
  del validation
  b = ease_weights(jnp.asarray(gram(train)), jnp.float32(hparams['lam']))
  return {'weights': np.asarray(jax.device_get(b))}, {}


@jax.jit
def dense_scores(x_BxI, w_IxI):
  return x_BxI @ w_IxI


def make_score_fn(arrays: dict, hparams: dict):
  """x B per batch; the batch is densified (B x I), the weights stay on the device."""
  del hparams
  w = jnp.asarray(arrays['weights'], jnp.float32)
  return lambda x: dense_scores(jnp.asarray(x.toarray(), jnp.float32), w)
