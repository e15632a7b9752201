"""The accelerator side of the benchmark: precisions, staged batches, steps per dispatch.

- `DTYPES`: what `--dtype` means, as (config.model.compute_dtype, matmul precision).
  bfloat16 rounds the dense products' inputs and keeps float32 accumulation, outputs,
  parameters, Adam state, softmax and loss (vaecf.models.nn.matmul); tf32 keeps float32
  everywhere and lets float32 products use TensorFloat32 (`jax.default_matmul_precision`).
- `stage`: the timed batches built with one nonzero count and put on the device before
  timing, so a run compiles once and times the device, not the input pipeline.
- `make_multi_step`: K train steps in one dispatch (`jax.lax.scan` over the jitted step,
  which JAX inlines), for steps short enough that launching them is the cost.
- `time_train`: users/s of the real step (vaecf.steps) or of the vmapped M-model sweep
  step (vaecf.sweep), counted as users x models.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import jax
import numpy as np
import scipy.sparse as sp

from vaecf import distributed, input_pipeline, models, sparse, steps
from vaecf.distributed import AXIS
from vaecf.sparse import SparseRows


@dataclasses.dataclass(frozen=True)
class Precision:
  compute_dtype: str  # config.model.compute_dtype
  matmul: str | None  # jax_default_matmul_precision while tracing; None: JAX's default


DTYPES = {
    # As vaecf.train runs: JAX's default float32 products, which jax.lax.Precision's
    # docstring says use TF32 on GPUs that have it (A100, H100); plain float32 on a CPU.
    'float32': Precision('float32', None),
    'float32_highest': Precision('float32', 'highest'),  # true float32 products anywhere
    'tf32': Precision('float32', 'tensorfloat32'),
    'bfloat16': Precision('bfloat16', None),
}


def matmul_precision(dtype: str):
  """The context the step must be traced (built and first called) in for `dtype`."""
  p = DTYPES[dtype].matmul
  return contextlib.nullcontext() if p is None else jax.default_matmul_precision(p)


def sample_users(x: sp.csr_matrix, n: int, seed: int = 2) -> sp.csr_matrix:
  """n users in a random order, wrapping round (and so repeating) when n > x's users."""
  order = np.random.default_rng(seed).permutation(x.shape[0])
  return x[order[np.arange(n) % x.shape[0]]]


def _max_shard_nnz(xb: sp.csr_matrix, n_shards: int, per: int) -> int:
  starts = np.minimum(np.arange(n_shards + 1) * per, xb.shape[0])
  return int(np.diff(xb.indptr[starts]).max())


def n_calls(n_steps: int, steps_per_call: int) -> int:
  """Timed calls for n_steps steps: whole calls, at least two."""
  return max(2, -(-n_steps // steps_per_call))


def users_needed(n_steps: int, steps_per_call: int, batch_size: int) -> int:
  """Users `time_train` reads: the timed calls, the compiling one and a warm-up."""
  return (n_calls(n_steps, steps_per_call) + 2) * steps_per_call * batch_size


def host_batches(x: sp.csr_matrix, batch_size: int, n_shards: int, n_batches: int
                 ) -> list[SparseRows]:
  """Consecutive batches of x (wrapping round) as host SparseRows, all with one
  bucketed nonzero count."""
  per = -(-batch_size // n_shards)
  n = x.shape[0]
  rows = [x[np.arange(i * batch_size, (i + 1) * batch_size) % n] for i in range(n_batches)]
  nnz = sparse.bucket_length(max(_max_shard_nnz(r, n_shards, per) for r in rows), 64)
  return [sparse.shard_rows(r, n_shards, per, nnz) for r in rows]


def stage(host: list[SparseRows], mesh, steps_per_call: int) -> list[SparseRows]:
  """Device batches: one per step, or stacks of `steps_per_call` ([K, ...], the batch
  axis still split over 'data') for `make_multi_step`. One process only."""
  if jax.process_count() > 1:
    raise ValueError('staged batches are built for one process')
  if steps_per_call == 1:
    return [input_pipeline.put_batch(b, mesh) for b in host]
  k = steps_per_call
  sharding = jax.sharding.NamedSharding(mesh, jax.P(None, AXIS))
  return [jax.device_put(jax.tree.map(lambda *a: np.stack(a), *host[i:i + k]), sharding)
          for i in range(0, len(host) - k + 1, k)]


def nbytes(tree) -> int:
  return sum(int(np.asarray(a).nbytes) for a in jax.tree.leaves(tree))


def make_multi_step(step, *, donate: bool = True):
  """multi(state, stacked_batches, sched) -> (state, metrics stacked over the K steps):
  `step` (a jitted train or sweep step) applied to each batch in turn, one dispatch."""
  def multi(state, stacked: SparseRows, sched):
    return jax.lax.scan(lambda s, b: step(s, b, sched), state, stacked)
  return jax.jit(multi, donate_argnums=(0,) if donate else ())


def _first_loss(metrics, steps_per_call: int) -> float:
  loss = np.asarray(jax.device_get(metrics['loss']))
  return float(np.mean(loss[0] if steps_per_call > 1 else loss))


def build_step(config, n_items: int, mesh, sweep_models: int = 0):
  """(step, state, sched) of the single model, or of an M-model beta sweep (caps spread
  over [0.1, 1]) with M copies of the same initial state."""
  model = models.build(config, n_items)
  opt = steps.make_optimizer(config)
  init = lambda k: steps.init_state(model, opt, k)
  if not sweep_models:
    state = jax.jit(init, out_shardings=distributed.replicated(mesh))(jax.random.key(0))
    return (steps.make_train_step(model, opt, mesh, seed=0), state,
            steps.schedule_from_config(config))
  from vaecf import sweep  # the sweep module brings in the trainer: only when asked
  c = config.copy_and_resolve_references()
  c.sweep.mode = 'cap'
  c.sweep.caps = tuple(float(v) for v in np.linspace(0.1, 1.0, sweep_models))
  state = jax.jit(lambda k: sweep.stack_states(init(k), sweep_models),
                  out_shardings=distributed.replicated(mesh))(jax.random.key(0))
  return sweep.make_sweep_step(model, opt, mesh, seed=0), state, sweep.hparams(c, n_items)


def time_train(config, x: sp.csr_matrix, mesh, n_steps: int, *, steps_per_call: int = 1,
               sweep_models: int = 0, max_measure_s: float = math.inf) -> dict:
  """Times `n_steps` steps (rounded up to whole calls) of `x`'s consecutive batches.

  The first call compiles (compile_s) and one more call warms up; both are untimed.
  Dispatch stays asynchronous, as in training; the timer stops when the last call's
  metrics are ready. `max_measure_s` ends the timed loop early (after two calls).
  Returns the figures plus '_state' and '_host' (the final state, the host batches).
  """
  k = max(1, steps_per_call)
  b = config.train.batch_size
  calls = n_calls(n_steps, k)
  t0 = time.perf_counter()
  host = host_batches(x, b, mesh.devices.size, (calls + 2) * k)
  batches = stage(host, mesh, k)
  stage_s = time.perf_counter() - t0
  step, state, sched = build_step(config, x.shape[1], mesh, sweep_models)
  call = step if k == 1 else make_multi_step(step)
  t = time.perf_counter()
  state, m = call(state, batches[0], sched)
  first_loss = _first_loss(m, k)  # waits for the call
  compile_s = time.perf_counter() - t
  state, m = call(state, batches[1], sched)
  jax.block_until_ready(m)
  done, t = 0, time.perf_counter()
  for i in range(calls):
    state, m = call(state, batches[2 + i], sched)
    done += 1
    if done >= 2 and time.perf_counter() - t > max_measure_s:
      break
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t) / (done * k)
  users = b * max(1, sweep_models)
  return {'compile_s': compile_s, 'step_s': dt, 'users_per_s': users / dt,
          'steps_timed': done * k, 'steps_per_call': k, 'models': max(1, sweep_models),
          'loss_first': first_loss, 'loss': float(np.mean(jax.device_get(m['loss']))),
          'nnz_per_batch': int(host[0].vals.shape[0]), 'staged_mb': nbytes(host) / 2 ** 20,
          'stage_s': stage_s, '_state': state, '_host': host}


def is_out_of_memory(e: BaseException) -> bool:
  text = f'{type(e).__name__} {e}'.lower()
  return any(s in text for s in ('resource_exhausted', 'out of memory', 'oom when',
                                 'failed to allocate'))


def device_memory() -> dict:
  """The first device's allocator figures where the backend keeps them (GPU, TPU)."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # not every backend has them
    stats = {}
  return {f'device_{k}_gb': v / 2 ** 30 for k, v in stats.items()
          if k in ('peak_bytes_in_use', 'bytes_limit')}
