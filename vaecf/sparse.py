"""Sparse user batches: CSR rows to padded (index, value) arrays with bucketed length.

Lengths are rounded up to a few sizes per octave so a run compiles a handful of shapes,
not one per batch. Padding uses index 0 with value 0, which adds nothing to a
gather-sum; code that must ignore padding checks `val > 0`.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import scipy.sparse as sp


def bucket_length(n: int, minimum: int = 8) -> int:
  """Rounds up to 4 steps per octave (<= 25% padding, few distinct shapes)."""
  n = max(int(n), minimum, 1)
  step = max(1, 1 << max((n - 1).bit_length() - 3, 0))
  return -(-n // step) * step


def pad_rows(x: sp.csr_matrix, n_rows: int) -> sp.csr_matrix:
  """Appends empty rows so a batch has a fixed number of rows."""
  if x.shape[0] == n_rows:
    return x
  if x.shape[0] > n_rows:
    raise ValueError(f'batch has {x.shape[0]} rows, more than {n_rows}')
  indptr = np.concatenate([x.indptr, np.full(n_rows - x.shape[0], x.indptr[-1])])
  return sp.csr_matrix((x.data, x.indices, indptr), shape=(n_rows, x.shape[1]))


def to_padded(x: sp.csr_matrix, length: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
  """(idx_BxL int32, val_BxL float32) holding each row's nonzeros left-aligned."""
  x = sp.csr_matrix(x)
  lengths = np.diff(x.indptr)
  max_len = int(lengths.max()) if len(lengths) else 0
  if length is None:
    length = bucket_length(max_len)
  elif max_len > length:
    raise ValueError(f'a row has {max_len} items, more than the padded length {length}')
  b = x.shape[0]
  idx = np.zeros((b, length), np.int32)
  val = np.zeros((b, length), np.float32)
  rows = np.repeat(np.arange(b), lengths)
  pos = np.arange(x.nnz) - np.repeat(x.indptr[:-1], lengths)
  idx[rows, pos] = x.indices
  val[rows, pos] = x.data
  return idx, val


def batches(x: sp.csr_matrix, batch_size: int):
  """Yields (start, stop, rows padded to batch_size) over consecutive rows."""
  for start in range(0, x.shape[0], batch_size):
    stop = min(start + batch_size, x.shape[0])
    yield start, stop, pad_rows(x[start:stop], batch_size)


@dataclasses.dataclass(frozen=True)
class SparseRows:
  """A batch of users as flat nonzeros, ready for a gather-sum first layer.

  Leading axes are shard-major: with D shards, `rows`/`cols`/`vals` are [D*N] and
  `user_mask`/`user_pos` are [D*B]; inside a shard `rows` index its B users and
  padding nonzeros carry row B (out of range, so segment sums drop them) and value 0.
  Within a shard `rows` never decreases (the models' segment sums rely on it).
  `user_pos` is each user's position in the global batch: randomness is keyed on it,
  so a sharded step draws exactly what a single-device step draws.
  """
  rows: np.ndarray
  cols: np.ndarray
  vals: np.ndarray
  user_mask: np.ndarray
  user_pos: np.ndarray

  @property
  def n_users(self) -> int:
    return self.user_mask.shape[-1]


jax.tree_util.register_dataclass(
    SparseRows, data_fields=['rows', 'cols', 'vals', 'user_mask', 'user_pos'], meta_fields=[])


def as_csr(x) -> sp.csr_matrix:
  """`x` itself when it is already CSR (csr_matrix or csr_array), else converted."""
  return x if sp.issparse(x) and x.format == 'csr' else sp.csr_matrix(x)


def shard_rows(x: sp.csr_matrix, n_shards: int = 1, n_users: int | None = None,
               nnz: int | None = None) -> SparseRows:
  """Splits a CSR batch into `n_shards` equal user blocks (padding users appended).

  `n_users` (per shard) and `nnz` (per shard) fix the shapes; by default they are
  the smallest that fit, with nnz rounded up by bucket_length (at least 64).
  """
  x = as_csr(x)
  return _shard(x, None, np.diff(x.indptr), n_shards, n_users, nnz)


def shard_rows_of(x: sp.csr_matrix, users: np.ndarray, n_shards: int = 1,
                  n_users: int | None = None, nnz: int | None = None) -> SparseRows:
  """`shard_rows(x[users], ...)`, array for array, without building `x[users]`.

  Each row's nonzeros are copied once, from `x` straight into the padded arrays (the
  training epoch's batches: scipy's row indexing and then shard_rows copied them twice,
  with more numpy calls than the copying cost).
  """
  x = as_csr(x)
  users = np.asarray(users)
  if users.ndim != 1 or users.dtype.kind not in 'iu':
    raise TypeError(f'users must be a vector of integers, not {users.dtype}{list(users.shape)}')
  m = x.shape[0]
  lo, hi = (int(users.min()), int(users.max())) if len(users) else (0, -1)
  if lo < -m or hi >= m:
    raise IndexError(f'a user is out of range for {m} rows')
  if lo < 0:  # counted from the end, as in x[users]
    users = np.where(users < 0, users + m, users)
  return _shard(x, users, x.indptr[users + 1] - x.indptr[users], n_shards, n_users, nnz)


def _shard(x: sp.csr_matrix, users: np.ndarray | None, lengths: np.ndarray, n_shards: int,
           n_users: int | None, nnz: int | None) -> SparseRows:
  """shard_rows of the rows `users` of `x` (all rows when None); `lengths` their sizes."""
  b = len(lengths)
  per = n_users if n_users is not None else -(-b // n_shards)
  if per * n_shards < b:
    raise ValueError(f'{b} users do not fit {n_shards} shards of {per}')
  starts = np.minimum(np.arange(n_shards + 1) * per, b)
  offsets = np.zeros(b + 1, np.int64)
  np.cumsum(lengths, out=offsets[1:])
  shard_nnz = np.diff(offsets[starts])
  most = int(shard_nnz.max())
  n = nnz if nnz is not None else bucket_length(most, 64)
  if most > n:
    raise ValueError(f'a shard has {most} nonzeros, more than {n}')
  # A shard is its users' runs of nonzeros and then one run of padding (row `per`), so
  # one repeat lays out every shard's rows, padding included.
  runs = np.zeros((n_shards, per + 1), np.int64)
  user_runs = np.zeros(n_shards * per, np.int64)
  user_runs[:b] = lengths
  runs[:, :per] = user_runs.reshape(n_shards, per)
  runs[:, per] = n - shard_nnz
  rows = _aligned(np.repeat(np.tile(np.arange(per + 1, dtype=np.int32), n_shards),
                            runs.reshape(-1)))
  # Not zeros: only each shard's tail is padding, and that is cleared below.
  cols = aligned_empty((n_shards, n), np.int32)
  vals = aligned_empty((n_shards, n), np.float32)
  for s in range(n_shards):  # a few C calls a shard, however many users it has
    lo, hi, z = starts[s], starts[s + 1], shard_nnz[s]
    if users is None:
      a, e = x.indptr[lo], x.indptr[hi]
      cols[s, :z] = x.indices[a:e]
      vals[s, :z] = x.data[a:e]
    else:
      _copy_rows(x, users[lo:hi], cols[s, :z], vals[s, :z])
    cols[s, z:] = 0
    vals[s, z:] = 0
  mask = aligned_empty(n_shards * per, np.float32)
  mask[:b] = 1.0
  mask[b:] = 0.0
  pos = aligned_empty(n_shards * per, np.int32)
  pos[:] = np.arange(n_shards * per, dtype=np.int32)
  return SparseRows(rows, cols.reshape(-1), vals.reshape(-1), mask, pos)


# Bytes: XLA:CPU adopts a host buffer without a copy at this alignment (numpy's usual
# 16-byte-aligned arrays were copied).
ALIGN = 64


def aligned_empty(shape, dtype) -> np.ndarray:
  """np.empty whose data starts on an ALIGN-byte boundary.

  jax.device_put(..., may_alias=True) can then lend the array to XLA:CPU instead of
  copying it; numpy's arrays from glibc's malloc are only 16-byte aligned.
  """
  dtype = np.dtype(dtype)
  shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
  size = math.prod(shape) * dtype.itemsize
  buf = np.empty(size + ALIGN, np.uint8)
  skip = -buf.ctypes.data % ALIGN
  return buf[skip:skip + size].view(dtype).reshape(shape)


def _aligned(a: np.ndarray) -> np.ndarray:
  """`a`, or an aligned copy of it."""
  if a.ctypes.data % ALIGN == 0:
    return a
  out = aligned_empty(a.shape, a.dtype)
  out[...] = a
  return out


def _copy_rows(x: sp.csr_matrix, users: np.ndarray, cols: np.ndarray, vals: np.ndarray
               ) -> None:
  """Writes the nonzeros of rows `users` of `x`, in order, into `cols` and `vals`."""
  index = x.indptr.dtype
  if (_csr_row_index is not None and x.indices.dtype == index
      and index in (np.int32, np.int64) and x.data.dtype in (np.float32, np.float64)):
    # scipy's row-indexing kernel: one copy a row, straight into the padded arrays when
    # the dtypes agree (the training matrix's int32 and float32), else through temporaries.
    # 4-5x the numpy gather below at ML-20M's shape.
    out_cols = cols if cols.dtype == index else np.empty(len(cols), index)
    out_vals = vals if vals.dtype == x.data.dtype else np.empty(len(vals), x.data.dtype)
    _csr_row_index(len(users), users.astype(index, copy=False), x.indptr, x.indices, x.data,
                   out_cols, out_vals)
    if out_cols is not cols:
      cols[:] = out_cols
    if out_vals is not vals:
      vals[:] = out_vals
    return
  lengths = x.indptr[users + 1] - x.indptr[users]
  src = np.repeat(x.indptr[users] - np.cumsum(lengths) + lengths, lengths)
  src += np.arange(len(src))
  for a, out in ((x.indices, cols), (x.data, vals)):
    if a.dtype == out.dtype:
      np.take(a, src, out=out, mode='clip')  # 'clip' skips take's buffered copy; in range
    else:
      out[:] = a[src]


try:  # private, but scipy's own fancy row indexing is built on it
  from scipy.sparse._sparsetools import csr_row_index as _csr_row_index
except ImportError:  # pragma: no cover
  _csr_row_index = None
