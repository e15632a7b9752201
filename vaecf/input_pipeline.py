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
  order = epoch_order(train.shape[0], seed, epoch, pass_index)
  per = -(-batch_size // mesh.devices.size)
  for start in range(0, len(order), batch_size):
    yield global_batch(train[order[start:start + batch_size]], mesh, per)


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
