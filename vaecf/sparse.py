"""Sparse user batches: CSR rows to padded (index, value) arrays with bucketed length.

Lengths are rounded up to a few sizes per octave so a run compiles a handful of shapes,
not one per batch. Padding uses index 0 with value 0, which adds nothing to a
gather-sum; code that must ignore padding checks `val > 0`.
"""
from __future__ import annotations

import dataclasses

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


def shard_rows(x: sp.csr_matrix, n_shards: int = 1, n_users: int | None = None,
               nnz: int | None = None) -> SparseRows:
  """Splits a CSR batch into `n_shards` equal user blocks (padding users appended).

  `n_users` (per shard) and `nnz` (per shard) fix the shapes; by default they are
  the smallest that fit, with nnz rounded up to a power of two.
  """
  x = sp.csr_matrix(x)
  b = x.shape[0]
  per = n_users if n_users is not None else -(-b // n_shards)
  if per * n_shards < b:
    raise ValueError(f'{b} users do not fit {n_shards} shards of {per}')
  starts = [min(s * per, b) for s in range(n_shards + 1)]
  shard_nnz = [int(x.indptr[starts[s + 1]] - x.indptr[starts[s]]) for s in range(n_shards)]
  n = nnz if nnz is not None else bucket_length(max(shard_nnz), 64)
  if max(shard_nnz) > n:
    raise ValueError(f'a shard has {max(shard_nnz)} nonzeros, more than {n}')
  rows = np.full((n_shards, n), per, np.int32)
  cols = np.zeros((n_shards, n), np.int32)
  vals = np.zeros((n_shards, n), np.float32)
  mask = np.zeros((n_shards, per), np.float32)
  lengths = np.diff(x.indptr)
  for s in range(n_shards):
    lo, hi = starts[s], starts[s + 1]
    a, z = x.indptr[lo], x.indptr[hi]
    rows[s, :z - a] = np.repeat(np.arange(hi - lo), lengths[lo:hi])
    cols[s, :z - a] = x.indices[a:z]
    vals[s, :z - a] = x.data[a:z]
    mask[s, :hi - lo] = 1.0
  pos = np.arange(n_shards * per, dtype=np.int32)
  return SparseRows(rows.reshape(-1), cols.reshape(-1), vals.reshape(-1),
                    mask.reshape(-1), pos)
