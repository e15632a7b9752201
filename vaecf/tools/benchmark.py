"""Throughput of the real training step and evaluator on a paper-sized synthetic matrix.

  python -m vaecf.tools.benchmark --shape=ml20m [--model=multvae] [--batch_size=500]
      [--dtype=float32] [--devices=N] [--steps=30] [--compare_dense]

The click matrix has the training shape and density of the chosen paper dataset
(heavy-tailed item popularity, log-normal user lengths >= 5, fixed seed), built
sparse in seconds. The last line printed is one JSON object with every figure.
"""
from __future__ import annotations

import json
import math
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from absl import app, flags

from vaecf import distributed, evaluate, input_pipeline, models, steps
from vaecf.config import base_config
from vaecf.data.split import sorted_unique

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


def peak_matmul_gflops(b: int, k: int, n: int, dtype, repeats: int = 10) -> float:
  """Measured GFLOP/s of one [b, k] @ [k, n] product (the decoder's last layer)."""
  a = jnp.ones((b, k), dtype)
  w = jnp.ones((k, n), dtype) * 0.01
  f = jax.jit(lambda a, w: (a @ w).astype(jnp.float32))
  f(a, w).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, w).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * b * k * n / best / 1e9


def time_train_step(config, x: sp.csr_matrix, mesh, n_steps: int) -> dict[str, float]:
  model = models.build(config, x.shape[1])
  opt = steps.make_optimizer(config)
  state = jax.jit(lambda k: steps.init_state(model, opt, k),
                  out_shardings=distributed.replicated(mesh))(jax.random.key(0))
  step = steps.make_train_step(model, opt, mesh, seed=0)
  sched = steps.schedule_from_config(config)
  b = config.train.batch_size
  per = -(-b // mesh.devices.size)
  batches = [input_pipeline.global_batch(x[i * b:(i + 1) * b], mesh, per)
             for i in range(n_steps + 1)]
  t = time.perf_counter()
  state, m = step(state, batches[0], sched)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t
  # Shapes vary with the batch's nonzeros: run every batch once untimed, so the
  # timed loop measures steps, not compilations.
  for batch in batches[1:]:
    state, m = step(state, batch, sched)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for batch in batches[1:]:
    state, m = step(state, batch, sched)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t) / n_steps
  return {'compile_s': compile_s, 'step_s': dt, 'users_per_s': b / dt,
          'loss': float(m['loss'])}


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
        compare_dense: bool = False, log=print) -> dict:
  n_users, n_items, mean_len = SHAPES[shape]
  t = time.perf_counter()
  x = synthetic_clicks(n_users, n_items, mean_len)
  gen_s = time.perf_counter() - t
  log(f'{shape}: {n_users:,} users x {n_items:,} items, {x.nnz:,} clicks '
      f'(generated in {gen_s:.1f}s)')
  config = base_config()
  config.model.name = model
  config.model.compute_dtype = dtype
  config.train.batch_size = batch_size
  mesh = distributed.make_mesh(jax.devices()[:devices] if devices else None)
  sample = x[np.random.default_rng(2).permutation(n_users)[:(n_steps + 1) * batch_size]]
  out = {'shape': shape, 'model': model, 'batch_size': batch_size, 'dtype': dtype,
         'devices': int(mesh.devices.size), 'platform': jax.devices()[0].platform,
         'n_users': n_users, 'n_items': n_items, 'nnz': int(x.nnz)}
  tr = time_train_step(config, sample, mesh, n_steps)
  nnz_per_user = sample.nnz / sample.shape[0]
  fl = flops_per_user(config, n_items, nnz_per_user)
  peak = peak_matmul_gflops(batch_size, 600, n_items, jnp.dtype(dtype))
  achieved = tr['users_per_s'] * fl['sparse'] / 1e9
  out.update({
      'train_users_per_s': tr['users_per_s'], 'step_s': tr['step_s'],
      'epoch_s': tr['step_s'] * math.ceil(n_users / batch_size), 'compile_s': tr['compile_s'],
      'mflops_per_user': fl['sparse'] / 1e6, 'dense_equiv_mflops_per_user': fl['dense'] / 1e6,
      'achieved_gflops': achieved, 'peak_matmul_gflops': peak, 'ratio': achieved / peak,
      'dense_equiv_ratio': tr['users_per_s'] * fl['dense'] / 1e9 / peak})
  if compare_dense:
    dense_cfg = config.copy_and_resolve_references()
    dense_cfg.model.input_layer = 'dense'
    dn = time_train_step(dense_cfg, sample, mesh, n_steps)
    out.update({'dense_input_users_per_s': dn['users_per_s'],
                'sparse_over_dense_speed': tr['users_per_s'] / dn['users_per_s']})
  out['eval_users_per_s'] = time_eval(config, x[:eval_users], mesh)
  out['peak_rss_gb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
  log(f"train {out['train_users_per_s']:,.0f} users/s ({out['step_s'] * 1e3:.0f} ms/step, "
      f"{out['epoch_s']:.0f} s/epoch, compile {out['compile_s']:.1f}s); "
      f"{out['mflops_per_user']:.1f} MFLOP/user -> {achieved:.1f} GFLOP/s of "
      f"{peak:.1f} peak (ratio {out['ratio']:.2f}; dense-equivalent {out['dense_equiv_ratio']:.2f})")
  if compare_dense:
    log(f"dense-input step {out['dense_input_users_per_s']:,.0f} users/s: sparse is "
        f"{out['sparse_over_dense_speed']:.2f}x faster")
  log(f"eval {out['eval_users_per_s']:,.0f} users/s; peak RSS {out['peak_rss_gb']:.2f} GB")
  return out


def _define_flags():
  flags.DEFINE_enum('shape', 'ml20m', list(SHAPES), 'Which paper dataset to imitate.')
  flags.DEFINE_enum('model', 'multvae', ['multvae', 'multdae'], 'Model.')
  flags.DEFINE_integer('batch_size', 500, 'Training users per step.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Matmul compute dtype.')
  flags.DEFINE_integer('devices', 0, 'Devices to use (0: all).')
  flags.DEFINE_integer('steps', 30, 'Timed training steps (after warm-up).')
  flags.DEFINE_integer('eval_users', 4000, 'Held-out users scored for the eval timing.')
  flags.DEFINE_bool('compare_dense', False, 'Also time the same step with a dense input layer.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from vaecf import console
  console.setup()
  f = flags.FLAGS
  out = run(f.shape, f.model, f.batch_size, f.dtype, f.devices, f.steps, f.eval_users,
            f.compare_dense)
  print(json.dumps(out))


def cli():
  """Console script entry point (vaecf-benchmark); flags exist only for the command."""
  from vaecf import console
  _define_flags()
  app.run(console.guarded(main))


if __name__ == '__main__':
  cli()
