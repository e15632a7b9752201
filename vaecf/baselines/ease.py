"""EASE (Steck 2019): closed-form item-item weights with a zero diagonal.

  P = (X^T X + lam I)^-1,  B = I - P diag(1 / diag(P)),  scores = x B.

Two ways to P, chosen by shape (`form='auto'`), equal up to rounding:
- primal: a Cholesky solve of the I x I Gram matrix, O(I^3), float32 on the device;
- dual (Woodbury), when there are fewer training users U than items:
  P = (I - X^T (X X^T + lam I)^-1 X) / lam, a U x U Cholesky solve against the U x I
  rows, O(U^2 I), in float64 (the subtraction cancels digits float32 would lose).
Either way B is a dense I x I matrix (fine up to I ~ 30k: 3.6 GB in float32).
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


def ease_weights_dual(train: sp.csr_matrix, lam: float) -> np.ndarray:
  """The same B through the U x U system (Woodbury): for U training users < I items."""
  import scipy.linalg
  x = sp.csr_matrix(train, dtype=np.float64)
  k_UxU = (x @ x.T).toarray()
  k_UxU[np.diag_indices_from(k_UxU)] += lam
  m_UxI = scipy.linalg.cho_solve(scipy.linalg.cho_factor(k_UxU, overwrite_a=True),
                                 x.toarray(), overwrite_b=True)
  p_IxI = -np.asarray(x.T @ m_UxI)  # X is sparse: this product costs nnz * I
  p_IxI[np.diag_indices_from(p_IxI)] += 1.0
  p_IxI /= lam
  b_IxI = (-p_IxI / np.diag(p_IxI)[None, :]).astype(np.float32)
  np.fill_diagonal(b_IxI, 0.0)
  return b_IxI


def choose_form(n_users: int, n_items: int) -> str:
  """'dual' when its O(U^2 I) beats the primal O(I^3) (fewer users than items)."""
  return 'dual' if n_users < n_items else 'primal'


def fit(train: sp.csr_matrix, hparams: dict, validation=None) -> tuple[dict, dict]:
  del validation
  form = hparams.get('form', 'auto')
  if form == 'auto':
    form = choose_form(*train.shape)
  if form == 'dual':
    b = ease_weights_dual(train, float(hparams['lam']))
  elif form == 'primal':
    b = np.asarray(jax.device_get(ease_weights(jnp.asarray(gram(train)),
                                               jnp.float32(hparams['lam']))))
  else:
    raise ValueError(f"EASE form {form!r}: use 'auto', 'primal' or 'dual'")
  return {'weights': b}, {'form': form}


@jax.jit
def dense_scores(x_BxI, w_IxI):
  return x_BxI @ w_IxI


def make_score_fn(arrays: dict, hparams: dict):
  """x B per batch; the batch is densified (B x I), the weights stay on the device."""
  del hparams
  w = jnp.asarray(arrays['weights'], jnp.float32)
  return lambda x: dense_scores(jnp.asarray(x.toarray(), jnp.float32), w)
