"""Training batches: shuffled epochs, fixed shapes, prepared off the critical path.

The epoch order is a function of (seed, epoch) alone (and of the pass, for a model
that makes several passes an epoch), so a resumed run replays exactly the batches an
uninterrupted run would have seen.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator

import jax
import numpy as np
import scipy.sparse as sp

from vaecf import sparse
from vaecf.distributed import batch_sharding
from vaecf.sparse import SparseRows


def epoch_order(n_users: int, seed: int, epoch: int, pass_index: int = 0) -> np.ndarray:
  # Pass 0 keeps the (seed, epoch) stream that single-pass runs have always used.
  entropy = [seed, epoch] if pass_index == 0 else [seed, epoch, pass_index]
  return np.random.default_rng(entropy).permutation(n_users)


def local_shard_ids(mesh) -> list[int]:
  """Positions along the 'data' axis of this process's devices."""
  me = jax.process_index()
  return [i for i, d in enumerate(mesh.devices.flat) if d.process_index == me]


def select_shards(batch: SparseRows, shard_ids: list[int], n_shards: int) -> SparseRows:
  if len(shard_ids) == n_shards:
    return batch
  take = lambda a: a.reshape(n_shards, -1)[shard_ids].reshape(-1)
  return jax.tree.map(take, batch)


def put_batch(batch: SparseRows, mesh) -> SparseRows:
  """Host batch -> global array sharded over 'data'.

  With several processes, `batch` holds only this process's shards (in the order
  of its devices along the mesh) and the global array is assembled from them.
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(
      lambda a: jax.make_array_from_process_local_data(sharding, a), batch)


def global_batch(x: sp.csr_matrix, mesh, users_per_shard: int) -> SparseRows:
  """A CSR batch as a device array sharded over 'data' (this process feeds its shards)."""
  n_shards = mesh.devices.size
  host = sparse.shard_rows(x, n_shards, users_per_shard)
  return put_batch(select_shards(host, local_shard_ids(mesh), n_shards), mesh)


def epoch_batches(train: sp.csr_matrix, batch_size: int, seed: int, epoch: int, mesh,
                  pass_index: int = 0) -> Iterator[SparseRows]:
  return order_batches(train, epoch_order(train.shape[0], seed, epoch, pass_index),
                       batch_size, mesh)


def order_batches(train: sp.csr_matrix, order: np.ndarray, batch_size: int, mesh,
                  nnz: int | None = None) -> Iterator[SparseRows]:
  """The batches of `order`'s users, `batch_size` at a time, on the device: each the
  arrays of global_batch(train[order[start:stop]], mesh, per) (padded to `nnz` per
  shard when given), built without the intermediate CSR."""
  n_shards = mesh.devices.size
  per = -(-batch_size // n_shards)
  mine = local_shard_ids(mesh)
  x = sparse.as_csr(train)
  order = np.asarray(order)
  if len(order) and 0 <= order.min() and order.max() < x.shape[0]:
    order = order.astype(x.indptr.dtype, copy=False)  # what scipy's row copier takes
  put = _Lender(mesh) if jax.process_count() == 1 else lambda b: put_batch(b, mesh)
  for start in range(0, len(order), batch_size):
    host = sparse.shard_rows_of(x, order[start:start + batch_size], n_shards, per, nnz)
    yield put(select_shards(host, mine, n_shards))


class _Lender:
  """put_batch for host batches that nothing else holds, for about half its cost.

  A device_put costs a fixed 25-30 us an array however small (more on a busy host):
  with five arrays, a third of a 2048-user batch's host time. So the arrays are lent
  to XLA:CPU, not copied (may_alias; sparse.shard_rows aligns them), and user_mask and
  user_pos, the same in every full batch, are put once: those batches share the device
  arrays, which is safe while no step donates its batch (none does).
  """

  def __init__(self, mesh):
    self.sharding = batch_sharding(mesh)
    self.kept: dict[str, tuple[np.ndarray, jax.Array]] = {}

  def __call__(self, batch: SparseRows) -> SparseRows:
    fresh = {'rows': batch.rows, 'cols': batch.cols, 'vals': batch.vals}
    reused = {}
    for name in ('user_mask', 'user_pos'):
      host = getattr(batch, name)
      kept = self.kept.get(name)
      if kept is not None and kept[0].shape == host.shape and np.array_equal(kept[0], host):
        reused[name] = kept[1]
      else:
        fresh[name] = host
    out = jax.device_put(fresh, self.sharding, may_alias=True)
    for name in ('user_mask', 'user_pos'):
      if name in out:
        self.kept[name] = (getattr(batch, name), out[name])
    return SparseRows(**out, **reused)


def prefetch(it: Iterator, size: int = 2) -> Iterator:
  """Runs `it` in a thread so host-side batch building overlaps device compute."""
  q: queue.Queue = queue.Queue(maxsize=size)
  done = object()

  def work():
    try:
      for item in it:
        q.put(item)
    except BaseException as e:  # surfaced in the consumer
      q.put(e)
    q.put(done)

  threading.Thread(target=work, daemon=True).start()
  while True:
    item = q.get()
    if item is done:
      return
    if isinstance(item, BaseException):
      raise item
    yield item
