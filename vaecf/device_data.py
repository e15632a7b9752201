"""Training data resident on the device: the epoch's order and every batch made there.

When the training CSR fits `train.device_data_budget_gb`, its arrays (indptr, indices,
data) are put on every device of the mesh once. Each pass then costs the host nothing:
  order   jax.random.permutation of the users under the key
          fold_in(fold_in(fold_in(key(seed), ORDER_STREAM), epoch), pass_index)
          (stream 0 is the init key, 1 the steps' noise), so a resumed run replays its
          batches; `epoch_order` is the same order on the host.
  batches each step gathers its users' nonzeros into exactly the SparseRows that
          `sparse.shard_rows(train[users], n_shards, per, nnz)` builds (same users, same
          nonzeros in the same order, padding rows=per, cols 0, vals 0, the last partial
          batch's missing users masked), each device gathering its own shard.
  steps   a jitted lax.scan over `steps_per_dispatch` batches calls the trainee's step,
          so one dispatch runs a block of steps.
The nonzeros per shard are fixed for the run (one compiled shape): the largest any batch
of the run's passes holds (all its epochs', computed on the device from the same orders
before training), rounded up by sparse.bucket_length. The bound of any possible batch,
the sum of the `per` longest rows, is 10-18x the mean on ML-20M-like data (the first
layer's gather would be as much larger); the run's own largest is 1.4-1.8x.

The order differs from the host pipeline's numpy order, so runs with it are other runs
(results['input'] says which fed a run); input_pipeline.order_batches feeds the host
pipeline any order and padding, which is how the two are compared to the bit
(tests/test_device_data.py).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from vaecf import sparse
from vaecf.config import DEVICE_DATA as MODES  # noqa: F401  (train.device_data's values)
from vaecf.distributed import AXIS, replicated
from vaecf.sparse import SparseRows

log = logging.getLogger(__name__)

ORDER_STREAM = 2  # the order's fold_in tag under key(seed): 0 init (vaecf.train), 1 steps


class Scanned(NamedTuple):
  """A block's metrics, stacked over its steps (the host pipeline's are one per step)."""
  metrics: Any


def order_key(seed, epoch, pass_index):
  return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
      jax.random.key(seed), ORDER_STREAM), epoch), pass_index)


@functools.partial(jax.jit, static_argnums=0)
def _order(n_users: int, seed, epoch, pass_index):
  return jax.random.permutation(order_key(seed, epoch, pass_index), n_users).astype(jnp.int32)


def epoch_order(n_users: int, seed: int, epoch: int, pass_index: int = 0) -> np.ndarray:
  """The device order of pass `pass_index` of `epoch`, on the host."""
  return np.asarray(_order(n_users, seed, epoch, pass_index))


def layout(batch_size: int, n_shards: int) -> tuple[int, int]:
  """(users per shard, user slots per batch) of the host pipeline's batches."""
  per = -(-batch_size // n_shards)
  return per, per * n_shards


def resident_bytes(train: sp.csr_matrix, batch_size: int, n_shards: int) -> int:
  """What each device holds: the CSR (int32 indptr and indices, float32 values) and one
  pass's padded order."""
  n = train.shape[0]
  slots = -(-n // batch_size) * layout(batch_size, n_shards)[1]
  return 4 * (n + 1) + 8 * train.nnz + 4 * slots


def choose(mode: str, train: sp.csr_matrix, mesh, batch_size: int, budget_gb: float
           ) -> tuple[bool, str]:
  """(whether the run's data goes on the device, why), for train.device_data=`mode`."""
  platform = mesh.devices.flat[0].platform
  need = resident_bytes(train, batch_size, mesh.devices.size)
  size = f'{need / 2 ** 20:.1f} MiB on each device'
  if mode == 'off':
    return False, 'train.device_data=off'
  if mode == 'auto' and platform == 'cpu':
    return False, 'train.device_data=auto on a CPU, where the host builds batches as fast'
  if train.nnz >= 2 ** 31:
    return False, f'{train.nnz} nonzeros overflow the int32 indices of the device copy'
  if need > budget_gb * 2 ** 30:
    return False, (f'the training data needs {size}, over train.device_data_budget_gb='
                   f'{budget_gb:g}')
  return True, f'train.device_data={mode} on {platform}: {size}'


def _replicate(a: np.ndarray, mesh) -> jax.Array:
  # From a callback: every process of a multi-host run supplies its own devices' copies.
  return jax.make_array_from_callback(a.shape, replicated(mesh), lambda idx: a[idx])


class DeviceData:
  """A training CSR on the device and the run's fixed batch shape (the module docstring).

  users(seed, epoch, pass_index) -> [batches, shards, per] int32, -1 for padding users
  batch(users, i) -> SparseRows     batch i of a pass, as the host pipeline builds it
  run_pass(step, state, users, on_block) -> (state, [Scanned])   the pass's steps
  """

  def __init__(self, train: sp.csr_matrix, mesh, batch_size: int, seed: int,
               passes: list[tuple[int, int]], steps_per_dispatch: int = 16):
    """`passes`: every (epoch, pass_index) the run trains, whose largest batch fixes
    the nonzeros per shard."""
    train = sp.csr_matrix(train)
    self.mesh, self.seed, self.passes = mesh, seed, set(passes)
    self.n_users, self.batch_size = train.shape[0], batch_size
    self.n_shards = mesh.devices.size
    self.per, self.slots = layout(batch_size, self.n_shards)
    self.n_batches = -(-self.n_users // batch_size)
    self.steps_per_dispatch = steps_per_dispatch
    self.csr = tuple(_replicate(np.ascontiguousarray(a, dt), mesh) for a, dt in (
        (train.indptr, np.int32), (train.indices, np.int32), (train.data, np.float32)))
    self.bytes = resident_bytes(train, batch_size, self.n_shards)
    self._users = jax.jit(self._users_of, out_shardings=replicated(mesh))
    epochs, idx = (jnp.asarray(np.array(v, np.int32)) for v in zip(*passes))
    self.largest = int(jax.jit(lambda indptr, e, k: jnp.max(jax.lax.map(
        lambda ek: self._largest_shard(indptr, self._users_of(seed, *ek)), (e, k))))(
            self.csr[0], epochs, idx))
    self.nnz = sparse.bucket_length(self.largest, 64)  # shard_rows' rounding
    self._gather = jax.jit(self._gather_batch)
    self._blocks: dict = {}

  def _users_of(self, seed, epoch, pass_index):
    n, b = self.n_users, self.batch_size
    order = jnp.full(self.n_batches * b, -1, jnp.int32).at[:n].set(
        _order(n, seed, epoch, pass_index)).reshape(self.n_batches, b)
    # Each batch's users fill the shards in turn, as shard_rows splits them.
    order = jnp.pad(order, ((0, 0), (0, self.slots - b)), constant_values=-1)
    return order.reshape(self.n_batches, self.n_shards, self.per)

  @staticmethod
  def _lengths(indptr, users):
    u = jnp.maximum(users, 0)
    return jnp.where(users >= 0, indptr[u + 1] - indptr[u], 0)

  def _largest_shard(self, indptr, users):
    return jnp.max(jnp.sum(self._lengths(indptr, users), axis=-1))

  def users(self, seed: int, epoch: int, pass_index: int = 0) -> jax.Array:
    # Another pass's batches could hold more nonzeros than the fixed length, and the
    # gather would drop them without a word.
    if seed != self.seed or (epoch, pass_index) not in self.passes:
      raise ValueError(f'pass {pass_index} of epoch {epoch} (seed {seed}) is not one whose '
                       f'batches fixed the nonzeros per shard (seed {self.seed})')
    return self._users(seed, epoch, pass_index)

  def _shard(self, csr, users):
    """One shard's SparseRows arrays from its users [1, per] (-1: a padding user)."""
    indptr, indices, data = csr
    users = users[0]
    n, per = self.nnz, self.per
    u = jnp.maximum(users, 0)
    start, length = indptr[u], self._lengths(indptr, users)
    ends = jnp.cumsum(length)
    p = jnp.arange(n, dtype=jnp.int32)
    # The user holding nonzero p: the first whose end is past it; `per` past the last
    # (the padding row shard_rows writes).
    rows = jnp.searchsorted(ends, p, side='right', method='scan_unrolled').astype(jnp.int32)
    real = rows < per
    r = jnp.minimum(rows, per - 1)
    src = jnp.where(real, start[r] + p - (ends[r] - length[r]), 0)
    cols = jnp.where(real, indices[src], 0)
    vals = jnp.where(real, data[src], 0.0)
    return rows, cols, vals, (users >= 0).astype(jnp.float32)

  def _gather_batch(self, csr, users_DxP) -> SparseRows:
    rows, cols, vals, mask = jax.shard_map(
        self._shard, mesh=self.mesh, in_specs=(jax.P(), jax.P(AXIS)),
        out_specs=jax.P(AXIS))(csr, users_DxP)
    return SparseRows(rows, cols, vals, mask, jnp.arange(self.slots, dtype=jnp.int32))

  def batch(self, users: jax.Array, i: int) -> SparseRows:
    """Batch i of the pass whose users are `users` (tests and tools; training gathers
    inside the scanned block)."""
    return self._gather(self.csr, users[i])

  def _block(self, fn, k: int):
    """state, users, csr, first batch, step args -> (state, metrics [k, ...]): k steps of
    `fn(state, batch, *args, **kwargs)` in one dispatch."""
    if (fn, k) not in self._blocks:
      def block(state, users, csr, i0, args, kwargs):
        def body(s, j):
          batch = self._gather_batch(csr, jax.lax.dynamic_index_in_dim(users, i0 + j,
                                                                       keepdims=False))
          return fn(s, batch, *args, **kwargs)
        return jax.lax.scan(body, state, jnp.arange(k, dtype=jnp.int32))
      self._blocks[fn, k] = jax.jit(block, donate_argnums=(0,))
    return self._blocks[fn, k]

  def run_pass(self, step, state, users, on_block=None):
    """The pass's steps in blocks of `steps_per_dispatch` (the last one shorter);
    returns (state, [Scanned]). A functools.partial step is unwrapped so that its
    bound arguments (hyperparameters) enter traced: each block compiles once per step
    function, not once per epoch's closure. on_block(batches done, metrics) after each."""
    fn, args, kwargs = step, (), {}
    if isinstance(step, functools.partial):
      fn, args, kwargs = step.func, step.args, step.keywords
    history, done = [], 0
    while done < self.n_batches:
      k = min(self.steps_per_dispatch, self.n_batches - done)
      state, m = self._block(fn, k)(state, users, self.csr, np.int32(done), args, kwargs)
      history.append(Scanned(m))
      done += k
      if on_block is not None:
        on_block(done, m)
    return state, history


def for_run(mode: str, train: sp.csr_matrix, mesh, batch_size: int, budget_gb: float,
            seed: int, passes: list[tuple[int, int]], steps_per_dispatch: int
            ) -> DeviceData | None:
  """The run's DeviceData, or None for the host pipeline; logs which and why, once."""
  on, why = choose(mode, train, mesh, batch_size, budget_gb)
  if not on:
    log.info('input: host pipeline (%s)', why)
    return None
  feed = DeviceData(train, mesh, batch_size, seed, passes, steps_per_dispatch)
  log.info('input: device-resident training data (%s; %d nonzeros per shard, the run\'s '
           'largest batch %d; %d steps a dispatch)', why, feed.nnz, feed.largest,
           steps_per_dispatch)
  return feed
