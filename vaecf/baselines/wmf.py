"""WMF (Hu, Koren & Volinsky 2008): implicit-feedback matrix factorisation by ALS, in JAX.

Minimises sum_ui c_ui (p_ui - u_u . y_i)^2 + lam (sum ||u_u||^2 + sum ||y_i||^2) with
p = x (binary) and confidence c = 1 + alpha * x. Each half-step solves, per row,

  (Y^T Y + Y_u^T (C_u - I) Y_u + lam I) u_u = Y_u^T C_u p_u,

where Y^T Y is shared (the precomputation trick of the paper) and the correction only
touches the row's nonzeros, gathered into padded batches of rows of similar length.

Training solves these systems by conjugate gradient warm-started from the previous
sweep (`cg_steps` per half-step, Takacs et al. 2011, as the `implicit` library does):
O(nnz K) per step instead of the O(nnz K^2) of forming every K x K system, and the same
fixed point. `cg_steps=0` forms the systems and solves them exactly (Cholesky).
Written in JAX rather than with `implicit` so the solves run batched on any
accelerator, and the code stays short and testable.

Strong generalisation: only the item factors are kept; a held-out user is folded in
by the exact user-side solve (Cholesky) against the fixed item factors.
"""
from __future__ import annotations


import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from vaecf import sparse

# Liang et al. tune the confidence of the ones, 1 + alpha in {2, 5, 10, 30, 50, 100}, and
# K in {100, 200}; we keep K, take 4 of the 6 confidences and add lam (unstated there).
GRID = tuple({'factors': k, 'alpha': a, 'lam': lam, 'iters': 15, 'cg_steps': 3}
             for k in (100, 200) for a in (4.0, 9.0, 29.0, 99.0)
             for lam in (10.0, 100.0))
SLOTS_PER_BATCH = 1 << 18  # rows x padded length per solve batch: bounds the gather


@jax.jit
def solve_rows(y_IxK, yty_KxK, idx_BxL, val_BxL, alpha, lam):
  """Least-squares factors of B rows given the other side's factors (padding: val 0)."""
  k = y_IxK.shape[1]
  on_BxL = (val_BxL > 0).astype(y_IxK.dtype)
  y_BxLxK = jnp.take(y_IxK, idx_BxL, axis=0) * on_BxL[..., None]
  extra_BxL = alpha * val_BxL * on_BxL  # c - 1 on the nonzeros
  a_BxKxK = (yty_KxK + lam * jnp.eye(k, dtype=y_IxK.dtype)
             + jnp.einsum('blk,bl,blm->bkm', y_BxLxK, extra_BxL, y_BxLxK))
  rhs_BxK = jnp.einsum('blk,bl->bk', y_BxLxK, (1.0 + extra_BxL) * on_BxL)
  chol = jnp.linalg.cholesky(a_BxKxK)
  return jax.scipy.linalg.cho_solve((chol, True), rhs_BxK[..., None])[..., 0]


@functools.partial(jax.jit, static_argnames=('steps',))
def cg_rows(y_IxK, rows_N, cols_N, vals_N, u0_RxK, alpha, lam, steps: int):
  """`steps` of conjugate gradient on every row's system, from u0; nonzeros given flat.

  rows_N index the R rows (padding: row R, value 0). Costs O(nnz K) per step and never
  forms the K x K systems that `solve_rows` builds.
  """
  n_rows = u0_RxK.shape[0]
  yty_KxK = y_IxK.T @ y_IxK
  y_NxK = jnp.take(y_IxK, cols_N, axis=0)
  extra_N = alpha * vals_N  # c - 1 on the nonzeros, 0 on padding
  rowsum = lambda v_NxK: jax.ops.segment_sum(v_NxK, rows_N, n_rows, indices_are_sorted=True)

  def matvec(v_RxK):
    v_NxK = jnp.take(v_RxK, rows_N, axis=0, mode='fill', fill_value=0.0)
    yv_N = jnp.sum(y_NxK * v_NxK, axis=1)
    return v_RxK @ yty_KxK + lam * v_RxK + rowsum(y_NxK * (extra_N * yv_N)[:, None])

  rhs_RxK = rowsum(y_NxK * ((1.0 + extra_N) * (vals_N > 0))[:, None])
  r = rhs_RxK - matvec(u0_RxK)
  rs = jnp.sum(r * r, axis=1, keepdims=True)
  safe = lambda num, den: jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)

  def body(_, carry):
    u, r, p, rs = carry
    ap = matvec(p)
    a = safe(rs, jnp.sum(p * ap, axis=1, keepdims=True))  # a solved row stays put
    u, r = u + a * p, r - a * ap
    rs_new = jnp.sum(r * r, axis=1, keepdims=True)
    return u, r, r + safe(rs_new, rs) * p, rs_new

  return jax.lax.fori_loop(0, steps, body, (u0_RxK, r, r, rs))[0]


def _flat_chunks(x: sp.csr_matrix, slots: int = 1 << 22):
  """(first row, rows, cols, vals) over contiguous row ranges of at most `slots` nonzeros.

  Shapes are bucketed so a fit compiles a couple of them, not one per chunk.
  """
  start = 0
  while start < x.shape[0]:
    stop = int(np.searchsorted(x.indptr, x.indptr[start] + slots, side='right')) - 1
    stop = min(max(stop, start + 1), x.shape[0])
    part = x[start:stop]
    n_rows, n = sparse.bucket_length(stop - start), sparse.bucket_length(part.nnz, 64)
    rows = np.full(n, n_rows, np.int32)
    rows[:part.nnz] = np.repeat(np.arange(stop - start), np.diff(part.indptr))
    cols = np.zeros(n, np.int32)
    cols[:part.nnz] = part.indices
    vals = np.zeros(n, np.float32)
    vals[:part.nnz] = part.data
    yield start, stop, n_rows, rows, cols, vals
    start = stop


def _pow2_at_least(n: int) -> int:
  return 1 << max(int(n) - 1, 0).bit_length()


def _row_batches(x: sp.csr_matrix, slots: int = SLOTS_PER_BATCH):
  """(row ids, idx, val) batches of rows sorted by length, shapes rounded to powers of two.

  Sorting keeps padding low; power-of-two shapes bound the number of compilations.
  """
  lengths = np.diff(x.indptr)
  order = np.argsort(lengths, kind='stable')
  start = 0
  while start < len(order):
    length = max(8, _pow2_at_least(lengths[order[start]]))
    ids = order[start:start + max(1, slots // length)]
    ids = ids[lengths[ids] <= length]  # sorted: a prefix, never empty
    idx, val = sparse.to_padded(sparse.pad_rows(x[ids], _pow2_at_least(len(ids))), length)
    yield ids, idx, val
    start += len(ids)


def half_step(x: sp.csr_matrix, y_IxK, alpha: float, lam: float, u0=None,
              cg_steps: int = 0) -> jax.Array:
  """New factors for every row of x given the column factors y (CG from u0 if cg_steps)."""
  a, l = jnp.float32(alpha), jnp.float32(lam)
  k = y_IxK.shape[1]
  parts = []
  if cg_steps:
    for start, stop, n_rows, rows, cols, vals in _flat_chunks(x):
      u0_RxK = jnp.zeros((n_rows, k), y_IxK.dtype)
      if u0 is not None:
        u0_RxK = u0_RxK.at[:stop - start].set(u0[start:stop])
      parts.append(cg_rows(y_IxK, rows, cols, vals, u0_RxK, a, l, cg_steps)[:stop - start])
    return jnp.concatenate(parts)
  yty = y_IxK.T @ y_IxK
  done = []
  for ids, idx, val in _row_batches(x):
    done.append(ids)
    parts.append(solve_rows(y_IxK, yty, idx, val, a, l)[:len(ids)])
  return jnp.concatenate(parts)[np.argsort(np.concatenate(done))]


def loss(x: sp.csr_matrix, u_UxK, y_IxK, alpha: float, lam: float) -> float:
  """The WMF objective without densifying x: sum over all (u, i) of (u.y)^2 plus corrections."""
  u, y = np.asarray(u_UxK, np.float64), np.asarray(y_IxK, np.float64)
  coo = x.tocoo()
  pred = np.einsum('nk,nk->n', u[coo.row], y[coo.col])
  all_sq = np.sum((u.T @ u) * (y.T @ y))  # sum_ui (u.y)^2 with c = 1 everywhere
  c = 1.0 + alpha * coo.data
  nz = np.sum(c * (1.0 - pred) ** 2 - pred ** 2)  # replace the nonzeros' terms
  return float(all_sq + nz + lam * (np.sum(u * u) + np.sum(y * y)))


def fit(train: sp.csr_matrix, hparams: dict, validation=None) -> tuple[dict, dict]:
  """ALS from small random item factors; returns the item factors only."""
  del validation
  k, alpha, lam = int(hparams['factors']), float(hparams['alpha']), float(hparams['lam'])
  x = sp.csr_matrix(train, dtype=np.float32)
  xt = sp.csr_matrix(x.T)
  key = jax.random.key(int(hparams.get('seed', 0)))
  y = 0.01 * jax.random.normal(key, (x.shape[1], k), jnp.float32)
  cg = int(hparams.get('cg_steps', 0))
  u = None
  for _ in range(int(hparams['iters'])):
    u = half_step(x, y, alpha, lam, u, cg)
    y = half_step(xt, u, alpha, lam, y, cg)
  u = half_step(x, y, alpha, lam)  # exact users for the final items, for the loss only
  return {'item_factors': np.asarray(y)}, {'train_loss': loss(x, u, y, alpha, lam)}


@jax.jit
def _fold_in_scores(y_IxK, idx_BxL, val_BxL, alpha, lam):
  u_BxK = solve_rows(y_IxK, y_IxK.T @ y_IxK, idx_BxL, val_BxL, alpha, lam)
  return u_BxK @ y_IxK.T


def make_score_fn(arrays: dict, hparams: dict):
  """Folds each user in by one solve against the fixed item factors, then u . y_i."""
  y = jnp.asarray(arrays['item_factors'], jnp.float32)
  alpha, lam = jnp.float32(hparams['alpha']), jnp.float32(hparams['lam'])

  def score_fn(x: sp.csr_matrix):
    idx, val = sparse.to_padded(x)
    return _fold_in_scores(y, idx, val, alpha, lam)
  return score_fn
