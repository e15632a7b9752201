"""Throughput of the real training step and evaluator on a paper-sized synthetic matrix.

  vaecf-benchmark --shape=ml20m [--model=multvae] [--batch_size=500]
      [--dtype=float32|bfloat16|tf32|float32_highest] [--steps_per_call=K]
      [--sweep_models=M] [--devices=N] [--steps=30] [--compare_dense] [--compare_torch]
      [--device_data [--steps_per_dispatch=16]]
  vaecf-benchmark --lower=cuda,tpu   (lowers every jitted function; vaecf.tools.lowering)

The click matrix has the training shape and density of the chosen paper dataset
(heavy-tailed item popularity, log-normal user lengths >= 5, fixed seed), built
sparse in seconds. It writes no file: the last line printed is one JSON object with
every figure. Timed
batches are staged on the device first (vaecf.tools.gpu, which also runs K steps a dispatch
and the M-model sweep); vaecf.tools.gpu_bench runs the grid of figures an accelerator needs.
--device_data also times whole passes as training runs them, fed by the host pipeline and
from device-resident data (vaecf.device_data), with one order and padding.

It is longer than 300 lines because every figure (the step, each of its products, the
machine's best GEMM by XLA and by NumPy, Adam, the input pipeline, the evaluator) is
measured here, side by side in one process, so that their ratios mean something.
"""
from __future__ import annotations

import functools
import json
import math
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sp
from absl import app, flags

from vaecf import (device_data, distributed, evaluate, input_pipeline, loop, models, optim,
                   process, steps)
from vaecf.config import base_config
from vaecf.data.split import sorted_unique
from vaecf.models import nn
from vaecf.tools import gpu

# Training users x items and mean items per user of the paper's datasets (docs/protocol.md).
SHAPES = {
    'ml20m': (116_677, 20_108, 73.1),
    'netflix': (383_435, 17_769, 122.8),
    'msd': (471_355, 41_140, 58.8),
    'tiny': (2_000, 1_000, 20.0),
}


def synthetic_clicks(n_users: int, n_items: int, mean_len: float, seed: int = 0,
                     sigma: float = 1.0) -> sp.csr_matrix:
  """Binary CSR with log-normal user lengths (>= 5) and Zipf-like item popularity."""
  rng = np.random.default_rng(seed)
  mu = math.log(max(mean_len - 5, 1.0)) - sigma ** 2 / 2
  lengths = np.minimum(5 + rng.lognormal(mu, sigma, n_users).astype(np.int64), n_items // 2)
  popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
  cdf = np.cumsum(popularity / popularity.sum())
  # Draw extra items per user, drop repeats, keep a random subset of the wanted length.
  draws = (lengths * 1.5 + 10).astype(np.int64)
  rows = np.repeat(np.arange(n_users), draws)
  cols = np.minimum(np.searchsorted(cdf, rng.random(len(rows)), side='right'), n_items - 1)
  codes = sorted_unique(rows * n_items + cols)
  rows, cols = codes // n_items, codes % n_items
  order = np.argsort(rows + rng.random(len(rows)))  # rows kept, random order within
  rows, cols = rows[order], cols[order]
  starts = np.searchsorted(rows, np.arange(n_users))
  keep = np.arange(len(rows)) - starts[rows] < lengths[rows]
  rows, cols = rows[keep], rng.permutation(n_items)[cols[keep]]  # popular ids scattered
  x = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(n_users, n_items))
  x.sort_indices()
  return x


def flops_per_user(config, n_items: int, nnz_per_user: float) -> dict[str, float]:
  """Matmul FLOPs per training user, forward + backward, from the architecture.

  A dense layer costs 2*d_in*d_out forward and twice that backward (input and
  weight gradients); the first layer has no input gradient, and from sparse
  input its cost is set by the user's nonzeros instead of I.
  """
  dims = models.hidden_dims(config, (600,) if config.model.name == 'multvae' else ())
  k = config.model.latent_dim
  if config.model.name == 'multvae':
    enc, dec = [n_items, *dims, 2 * k], [k, *reversed(dims), n_items]
  else:
    enc, dec = [n_items, *dims, k], [k, *reversed(dims), n_items]
  rest = sum(6 * a * b for a, b in zip(enc[1:-1], enc[2:])) + \
      sum(6 * a * b for a, b in zip(dec[:-1], dec[1:]))
  return {'sparse': 4 * nnz_per_user * enc[1] + rest, 'dense': 4 * n_items * enc[1] + rest}


def _best_s(f, repeats: int) -> float:
  """Fastest of `repeats` calls after one warm-up: on a shared machine the minimum is
  the least disturbed estimate of what the code itself costs."""
  jax.block_until_ready(f())
  best = math.inf
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f())
    best = min(best, time.perf_counter() - t)
  return best


def _gemm_operands(b: int, k: int, n: int, dtype):
  rng = np.random.default_rng(0)
  return (rng.standard_normal((b, k), np.float32).astype(dtype),
          (0.01 * rng.standard_normal((k, n), np.float32)).astype(dtype),
          rng.standard_normal((b, n), np.float32).astype(dtype))


def xla_gemm_gflops(b: int, k: int, n: int, dtype, repeats: int = 10) -> dict[str, float]:
  """GFLOP/s of XLA's plain products of the decoder's shapes, with this process's flags:
  forward [b,k]@[k,n], weight gradient [k,b]@[b,n], input gradient [b,n]@[n,k]."""
  h, w, g = (jnp.asarray(a) for a in _gemm_operands(b, k, n, dtype))
  dims = lambda ca, cb: (((ca,), (cb,)), ((), ()))
  prods = {'forward': (lambda h, w, g: h @ w),
           'weight_grad': (lambda h, w, g: jax.lax.dot_general(h, g, dims(0, 0))),
           'input_grad': (lambda h, w, g: jax.lax.dot_general(g, w, dims(1, 1)))}
  flop = 2 * b * k * n / 1e9
  return {name: flop / _best_s(functools.partial(jax.jit(f), h, w, g), repeats)
          for name, f in prods.items()}


def peak_matmul_gflops(b: int, k: int, n: int, dtype, repeats: int = 10) -> float:
  """The best of XLA's three decoder-shaped products in this process."""
  return max(xla_gemm_gflops(b, k, n, dtype, repeats).values())


def numpy_gemm_gflops(b: int, k: int, n: int, repeats: int = 10) -> dict[str, float]:
  """The same three float32 products through NumPy's BLAS, in this process."""
  h, w, g = _gemm_operands(b, k, n, np.float32)
  flop = 2 * b * k * n / 1e9
  return {'forward': flop / _best_s(lambda: h @ w, repeats),
          'weight_grad': flop / _best_s(lambda: h.T @ g, repeats),
          'input_grad': flop / _best_s(lambda: g @ w.T, repeats)}


# Variables that pick OpenBLAS's kernel or blocking: a wrong one (a core type older
# than the CPU) can halve NumPy's GEMM, so the benchmark also measures without them.
_BLAS_ENV = ('OPENBLAS_CORETYPE', 'OPENBLAS_L2_SIZE')


def blas_info() -> dict:
  """NumPy's BLAS as loaded here: library, version and the kernel (core) it chose."""
  info = {name: os.environ.get(name) for name in _BLAS_ENV}
  try:
    import threadpoolctl
    libs = [l for l in threadpoolctl.threadpool_info() if l.get('user_api') == 'blas']
    if libs:
      info.update({k: libs[0].get(k) for k in ('internal_api', 'version', 'architecture',
                                                'num_threads')})
  except ImportError:
    info['threadpoolctl'] = 'not installed'
  return info


def numpy_gemm_clean_env(b: int, k: int, n: int, repeats: int = 10) -> dict:
  """numpy_gemm_gflops in a fresh interpreter with the OpenBLAS variables unset."""
  env = {k: v for k, v in os.environ.items() if k not in _BLAS_ENV}
  code = ('import json; from vaecf.tools import benchmark as b; '
          f'print(json.dumps({{"gflops": b.numpy_gemm_gflops({b}, {k}, {n}, {repeats}), '
          '"blas": b.blas_info()}))')
  try:
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                          text=True, timeout=300)
    return json.loads(proc.stdout.strip().splitlines()[-1])
  except Exception as e:  # the figure is informative; never fail the benchmark on it
    return {'error': repr(e)[:200]}


def gemm_peaks(b: int, k: int, n: int, dtype, repeats: int = 10) -> dict:
  """The machine's best GEMM of the decoder's shape, from XLA and (float32 on a CPU,
  where the model's products might run through it) from NumPy."""
  out = {'xla': xla_gemm_gflops(b, k, n, dtype, repeats)}
  if jnp.dtype(dtype) == jnp.float32 and jax.devices()[0].platform == 'cpu':
    out['numpy'] = numpy_gemm_gflops(b, k, n, repeats)
    out['numpy_blas'] = blas_info()
    clean = numpy_gemm_clean_env(b, k, n, repeats)
    out['numpy_clean_env'] = clean.get('gflops', {})
    out['numpy_clean_env_blas'] = clean.get('blas', clean)
  best = {src: max(v.values()) for src, v in out.items()
          if src in ('xla', 'numpy', 'numpy_clean_env') and v}
  out['best_source'] = max(best, key=best.get)
  out['best'] = best[out['best_source']]
  return out


def step_parts(batch, params, opt, repeats: int = 5) -> dict[str, float]:
  """GFLOP/s of the step's own large products, each jitted alone with the model's code
  (so they follow its layout and this process's flags), and the Adam update's time."""
  dec = params['decoder'][-1]
  enc0 = params['encoder'][0]
  b = batch.n_users
  k, out_dim = nn.dense_dims(dec)
  rng = np.random.default_rng(3)
  h = jnp.asarray(rng.standard_normal((b, k), np.float32))
  g = jnp.asarray(rng.standard_normal((b, out_dim), np.float32))
  dense = lambda p, h: nn.dense(p, h)
  fwd = jax.jit(dense)
  wgrad = jax.jit(lambda p, h, g: jax.vjp(lambda p: dense(p, h), p)[1](g)[0])
  igrad = jax.jit(lambda p, h, g: jax.vjp(lambda h: dense(p, h), h)[1](g)[0])
  flop = 2 * b * k * out_dim / 1e9
  out = {'decoder_forward_gflops': flop / _best_s(lambda: fwd(dec, h), repeats),
         'decoder_weight_grad_gflops': flop / _best_s(lambda: wgrad(dec, h, g), repeats),
         'decoder_input_grad_gflops': flop / _best_s(lambda: igrad(dec, h, g), repeats)}
  v = nn.normalized_input(batch)
  hid = nn.dense_dims(enc0)[1]
  gh = jnp.asarray(rng.standard_normal((b, hid), np.float32))
  gather = jax.jit(lambda p, x, v: nn.sparse_dense(p, x, v))
  scatter = jax.jit(lambda p, x, v, gh: jax.vjp(lambda p: nn.sparse_dense(p, x, v), p)[1](gh)[0])
  nnz = float(jnp.sum(batch.vals != 0))
  flop = 2 * nnz * hid / 1e9
  out['first_layer_gather_gflops'] = flop / _best_s(lambda: gather(enc0, batch, v), repeats)
  out['first_layer_scatter_gflops'] = flop / _best_s(
      lambda: scatter(enc0, batch, v, gh), repeats)
  grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)

  def via_optax(p, g, s):  # the step's optimiser, as the step applies it
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  lr = 1e-3
  for key, fn in (('adam_s', via_optax),
                  ('adam_fused_s', lambda p, g, s: optim.adam_step(p, g, s, lr))):
    update = jax.jit(fn, donate_argnums=(0, 2))  # grads an argument, not a baked constant
    state = [jax.tree.map(jnp.copy, params), optim.init(params)]
    def run_adam(update=update, state=state):
      state[0], state[1] = update(state[0], grads, state[1])
      return state[0]
    out[key] = _best_s(run_adam, repeats)
  return out


def time_train_step(config, x: sp.csr_matrix, mesh, n_steps: int,
                    steps_per_call: int = 1) -> dict:
  """gpu.time_train of the single model, with the step's products and Adam timed apart."""
  tr = gpu.time_train(config, x, mesh, n_steps, steps_per_call=steps_per_call)
  batch = input_pipeline.put_batch(tr.pop('_host')[1], mesh)
  tr['parts'] = step_parts(batch, tr.pop('_state')['params'], steps.make_optimizer(config))
  return tr


def time_input_pipeline(x: sp.csr_matrix, batch_size: int, mesh, n_batches: int) -> float:
  """Seconds to build one training batch the way an epoch does (shuffled rows of the
  full matrix, padded and put on device), without the prefetch thread that hides it."""
  it = input_pipeline.epoch_batches(x, batch_size, 0, 1, mesh)
  jax.block_until_ready(next(it))
  t = time.perf_counter()
  n = 0
  for batch in it:
    jax.block_until_ready(batch)
    n += 1
    if n == n_batches:
      break
  return (time.perf_counter() - t) / max(n, 1)


def time_fed_training(config, x: sp.csr_matrix, mesh, steps_per_dispatch: int) -> dict:
  """Users/s of a training pass over x through vaecf.loop.run_pass, fed by the host
  pipeline (batches built and put on the device by a prefetch thread) and from
  device-resident data (steps_per_dispatch steps a dispatch), in one order (the device's)
  and with one nonzero count per shard, so both run the same steps on the same batches.
  Each is timed on its second pass (the first compiles)."""
  b, seed = config.train.batch_size, 0
  step, state, sched = gpu.build_step(config, x.shape[1], mesh)
  step = functools.partial(step, sched=sched)  # as the trainers pass it
  copy = jax.jit(lambda s: jax.tree.map(jnp.copy, s))
  t = time.perf_counter()
  feed = device_data.DeviceData(x, mesh, b, seed, [(1, 0), (2, 0)], steps_per_dispatch)
  setup_s = time.perf_counter() - t
  out = {'device_steps_per_dispatch': steps_per_dispatch, 'device_data_setup_s': setup_s,
         'device_data_mb': feed.bytes / 2 ** 20, 'device_data_nnz_per_shard': feed.nnz,
         'fed_pass_users': x.shape[0]}
  for name, kw in (('host_fed', lambda e: {'order': device_data.epoch_order(
      x.shape[0], seed, e), 'nnz': feed.nnz}), ('device_data', lambda e: {'feed': feed})):
    s, seconds = copy(state), []
    for epoch in (1, 2):
      t = time.perf_counter()
      s, history = loop.run_pass(step, s, x, b, seed, epoch, mesh, **kw(epoch))
      jax.block_until_ready(history)
      seconds.append(time.perf_counter() - t)
    out[f'{name}_first_pass_s'] = seconds[0]  # with its compiles
    out[f'{name}_users_per_s'] = x.shape[0] / seconds[1]
    out[f'{name}_loss'] = float(np.mean(np.concatenate([np.atleast_1d(jax.device_get(
        h.metrics['loss'] if isinstance(h, device_data.Scanned) else h['loss']))
        for h in history])))  # the second pass's mean
  out['device_over_host_fed_speed'] = out['device_data_users_per_s'] / out['host_fed_users_per_s']
  return out


def time_eval(config, x: sp.csr_matrix, mesh) -> float:
  """Evaluation users/s: scoring, fold-in masking, top-100 and the metrics."""
  model = models.build(config, x.shape[1])
  params = jax.jit(model.init, out_shardings=distributed.replicated(mesh))(jax.random.key(1))
  for_params, batch = steps.make_scorer(model, mesh, config.train.eval_batch_size)
  rng = np.random.default_rng(1)
  is_target = rng.random(x.nnz) < 0.2
  fold_in = sp.csr_matrix((x.data * ~is_target, x.indices, x.indptr), shape=x.shape)
  targets = sp.csr_matrix((x.data * is_target, x.indices, x.indptr), shape=x.shape)
  fold_in.eliminate_zeros()
  targets.eliminate_zeros()
  evaluate.evaluate(for_params(params), fold_in[:batch], targets[:batch], batch_size=batch)
  t = time.perf_counter()
  res = evaluate.evaluate(for_params(params), fold_in, targets, batch_size=batch)
  return res.n_users / (time.perf_counter() - t)


def run(shape: str, model: str = 'multvae', batch_size: int = 500, dtype: str = 'float32',
        devices: int = 0, n_steps: int = 30, eval_users: int = 4000,
        compare_dense: bool = False, steps_per_call: int = 1, sweep_models: int = 0,
        log=print, compare_torch: bool = False, device_data: bool = False,
        steps_per_dispatch: int | None = None) -> dict:
  with gpu.matmul_precision(dtype):  # read when each step is traced
    return _run(shape, model, batch_size, dtype, devices, n_steps, eval_users,
                compare_dense, steps_per_call, sweep_models, log, compare_torch,
                device_data, steps_per_dispatch)


def _run(shape, model, batch_size, dtype, devices, n_steps, eval_users, compare_dense,
         steps_per_call, sweep_models, log, compare_torch=False, fed=False,
         steps_per_dispatch=None) -> dict:
  n_users, n_items, mean_len = SHAPES[shape]
  t = time.perf_counter()
  x = synthetic_clicks(n_users, n_items, mean_len)
  gen_s = time.perf_counter() - t
  log(f'{shape}: {n_users:,} users x {n_items:,} items, {x.nnz:,} clicks '
      f'(generated in {gen_s:.1f}s)')
  config = base_config()
  config.model.name = model
  config.model.compute_dtype = gpu.DTYPES[dtype].compute_dtype
  config.train.batch_size = batch_size
  mesh = distributed.make_mesh(jax.devices()[:devices] if devices else None)
  k = max(1, steps_per_call)
  sample = gpu.sample_users(x, gpu.users_needed(n_steps, k, batch_size))
  out = {'shape': shape, 'model': model, 'batch_size': batch_size, 'dtype': dtype,
         'compute_dtype': config.model.compute_dtype,
         'matmul_precision': gpu.DTYPES[dtype].matmul or 'default', 'steps_per_call': k,
         'devices': int(mesh.devices.size), 'platform': jax.devices()[0].platform,
         'n_users': n_users, 'n_items': n_items, 'nnz': int(x.nnz)}
  tr = time_train_step(config, sample, mesh, n_steps, k)
  nnz_per_user = sample.nnz / sample.shape[0]
  fl = flops_per_user(config, n_items, nnz_per_user)
  peaks = gemm_peaks(batch_size, 600, n_items, jnp.dtype(config.model.compute_dtype))
  peak = peaks['best']
  achieved = tr['users_per_s'] * fl['sparse'] / 1e9
  pipeline_s = time_input_pipeline(x, batch_size, mesh, min(n_steps, 20))
  out.update({
      'train_users_per_s': tr['users_per_s'], 'step_s': tr['step_s'], 'loss': tr['loss'],
      'loss_first': tr['loss_first'], 'staged_mb': tr['staged_mb'],
      'epoch_s': tr['step_s'] * math.ceil(n_users / batch_size), 'compile_s': tr['compile_s'],
      'mflops_per_user': fl['sparse'] / 1e6, 'dense_equiv_mflops_per_user': fl['dense'] / 1e6,
      'achieved_gflops': achieved, 'peak_matmul_gflops': peak, 'ratio': achieved / peak,
      'dense_equiv_ratio': tr['users_per_s'] * fl['dense'] / 1e9 / peak,
      'peak_source': peaks['best_source'],
      'xla_gemm_gflops': peaks['xla'], 'numpy_gemm_gflops': peaks.get('numpy'),
      'numpy_blas': peaks.get('numpy_blas'),
      'numpy_clean_env_gemm_gflops': peaks.get('numpy_clean_env'),
      'numpy_clean_env_blas': peaks.get('numpy_clean_env_blas'),
      **tr['parts'], 'adam_fraction_of_step': tr['parts']['adam_s'] / tr['step_s'],
      'input_pipeline_s_per_batch': pipeline_s,
      'input_pipeline_users_per_s': batch_size / pipeline_s,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      **process.settings()})
  if compare_dense:
    dense_cfg = config.copy_and_resolve_references()
    dense_cfg.model.input_layer = 'dense'
    dn = gpu.time_train(dense_cfg, sample, mesh, n_steps, steps_per_call=k)
    out.update({'dense_input_users_per_s': dn['users_per_s'],
                'sparse_over_dense_speed': tr['users_per_s'] / dn['users_per_s']})
  if compare_torch:
    if model != 'multvae' or dtype != 'float32':
      raise ValueError('--compare_torch times float32 Mult-VAE only')
    from vaecf.tools import torch_reference
    pt = torch_reference.time_train(sample, batch_size, n_steps)
    out.update({'torch_users_per_s': pt['users_per_s'], 'torch_version': pt['version'],
                'torch_threads': pt['threads'],
                'vaecf_over_torch_speed': tr['users_per_s'] / pt['users_per_s']})
  if sweep_models:
    sw = gpu.time_train(config, sample, mesh, n_steps, steps_per_call=k,
                        sweep_models=sweep_models)
    out.update({'sweep_models': sweep_models, 'sweep_users_per_s': sw['users_per_s'],
                'sweep_step_s': sw['step_s'], 'sweep_compile_s': sw['compile_s'],
                'sweep_over_single_speed': sw['users_per_s'] / tr['users_per_s']})
  if fed:
    spd = steps_per_dispatch or config.train.steps_per_dispatch
    # Whole blocks, at least two of them, of the timed steps' users.
    n_fed = max(n_steps, 2 * spd) * batch_size
    out.update(time_fed_training(config, gpu.sample_users(x, n_fed), mesh, spd))
  out['eval_users_per_s'] = time_eval(config, x[:eval_users], mesh)
  out['peak_rss_gb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
  log(f"train {out['train_users_per_s']:,.0f} users/s ({out['step_s'] * 1e3:.0f} ms/step, "
      f"{out['epoch_s']:.0f} s/epoch, compile {out['compile_s']:.1f}s); "
      f"{out['mflops_per_user']:.1f} MFLOP/user -> {achieved:.1f} GFLOP/s of "
      f"{peak:.1f} peak (ratio {out['ratio']:.2f}; dense-equivalent {out['dense_equiv_ratio']:.2f})")
  fmt = lambda d: ' / '.join(f'{v:.0f}' for v in d.values()) if d else 'n/a'
  log(f"GEMM [{batch_size},600]x[600,{n_items}] forward / weight grad / input grad, GFLOP/s: "
      f"XLA {fmt(peaks['xla'])}; NumPy {fmt(peaks.get('numpy'))}"
      + (f"; NumPy in a subprocess without {'/'.join(_BLAS_ENV)} "
         f"{fmt(peaks.get('numpy_clean_env'))}" if 'numpy_clean_env' in peaks else '')
      + f" -> peak {peak:.1f} ({peaks['best_source']}); BLAS {peaks.get('numpy_blas')}")
  p = tr['parts']
  log(f"in the step's layout, GFLOP/s: decoder forward {p['decoder_forward_gflops']:.1f}, "
      f"weight grad {p['decoder_weight_grad_gflops']:.1f}, input grad "
      f"{p['decoder_input_grad_gflops']:.1f}; first layer gather "
      f"{p['first_layer_gather_gflops']:.1f}, scatter {p['first_layer_scatter_gflops']:.1f}")
  log(f"Adam update {p['adam_s'] * 1e3:.1f} ms ({out['adam_fraction_of_step']:.0%} of a step; "
      f"optim.adam_step {p['adam_fused_s'] * 1e3:.1f} ms); "
      f"input pipeline {pipeline_s * 1e3:.1f} ms/batch "
      f"({out['input_pipeline_users_per_s']:,.0f} users/s); XLA_FLAGS={out['xla_flags']!r}; "
      f"malloc {out['malloc'] or 'glibc defaults'}")
  if compare_torch:
    log(f"plain PyTorch {out['torch_version']} ({out['torch_threads']} threads), same users: "
        f"{out['torch_users_per_s']:,.0f} users/s; vaecf {out['vaecf_over_torch_speed']:.2f}x")
  if sweep_models:
    log(f"{sweep_models}-model sweep {out['sweep_users_per_s']:,.0f} users x models/s "
        f"({out['sweep_over_single_speed']:.2f}x one model's)")
  if compare_dense:
    log(f"dense-input step {out['dense_input_users_per_s']:,.0f} users/s: sparse is "
        f"{out['sparse_over_dense_speed']:.2f}x faster")
  if fed:
    log(f"training passes of {out['fed_pass_users']:,} users: host-fed "
        f"{out['host_fed_users_per_s']:,.0f} users/s, device-resident "
        f"{out['device_data_users_per_s']:,.0f} users/s ({out['device_steps_per_dispatch']} "
        f"steps a dispatch, {out['device_data_nnz_per_shard']} nonzeros a shard, "
        f"{out['device_data_mb']:.1f} MiB on each device): "
        f"{out['device_over_host_fed_speed']:.2f}x")
  log(f"eval {out['eval_users_per_s']:,.0f} users/s; peak RSS {out['peak_rss_gb']:.2f} GB")
  return out


def _define_flags():
  flags.DEFINE_enum('shape', 'ml20m', list(SHAPES), 'Which paper dataset to imitate.')
  flags.DEFINE_enum('model', 'multvae', ['multvae', 'multdae'], 'Model.')
  flags.DEFINE_integer('batch_size', 500, 'Training users per step.')
  flags.DEFINE_enum('dtype', 'float32', list(gpu.DTYPES),
                    'Products: float32 (JAX default), bfloat16 inputs, tf32, float32_highest.')
  flags.DEFINE_integer('steps_per_call', 1, 'Train steps per dispatch (lax.scan over K).')
  flags.DEFINE_integer('sweep_models', 0, 'Also time the vmapped beta sweep of M models.')
  flags.DEFINE_integer('devices', 0, 'Devices to use (0: all).')
  flags.DEFINE_integer('steps', 30, 'Timed training steps (after warm-up).')
  flags.DEFINE_integer('eval_users', 4000, 'Held-out users scored for the eval timing.')
  flags.DEFINE_bool('compare_dense', False, 'Also time the same step with a dense input layer.')
  flags.DEFINE_bool('compare_torch', False, 'Also time a plain PyTorch Mult-VAE step on the '
                    'same users (vaecf.tools.torch_reference; needs torch installed).')
  flags.DEFINE_bool('device_data', False, 'Also time training passes fed by the host '
                    'pipeline and from device-resident data (vaecf.device_data).')
  flags.DEFINE_integer('steps_per_dispatch', None, 'With --device_data: steps a dispatch '
                       '(default: train.steps_per_dispatch).')
  flags.DEFINE_list('lower', [], 'Instead of timing: lower every jitted function for these '
                    'platforms (e.g. cuda,tpu) with jax.export and print a table '
                    '(vaecf.tools.lowering); exit 1 unless all lower.')
  flags.DEFINE_integer('lower_devices', 8, 'With --lower on a CPU: fake this many host '
                       'devices, so the data-parallel steps lower with their collectives.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from vaecf import console
  console.setup()
  f = flags.FLAGS
  if f.lower:
    from vaecf.tools import lowering
    # Before JAX starts its backend (nothing has touched a device yet): a mesh of N
    # devices, as a multi-chip host would have, even on a one-CPU machine.
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_'
                               f'platform_device_count={f.lower_devices}').strip()
    rows = lowering.lower_all(tuple(f.lower))
    print(lowering.report(rows))
    return 0 if lowering.all_lowered(rows) else 1
  out = run(f.shape, f.model, f.batch_size, f.dtype, f.devices, f.steps, f.eval_users,
            f.compare_dense, f.steps_per_call, f.sweep_models, compare_torch=f.compare_torch,
            device_data=f.device_data, steps_per_dispatch=f.steps_per_dispatch)
  print(json.dumps(out))


def cli():
  """Console script entry point (vaecf-benchmark); flags exist only for the command."""
  from vaecf import console
  _define_flags()
  console.cli(main, __name__)


if __name__ == '__main__':
  cli()
