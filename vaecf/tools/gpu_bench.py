"""The accelerator figures in one prepared run: users/s of the real train step at a paper
shape, per batch size and precision, with several steps per dispatch, and a 6-model sweep;
and of whole training passes, fed by the host pipeline and from device-resident data.

  python -m vaecf.tools.gpu_bench          # ML-20M shape, the default grid; < 5 min on an H200
  python -m vaecf.tools.gpu_bench --quick  # tiny shape, two steps a variant: a CPU check

A variant is `dtype:batch[:kK][:mM][:fed]`: a `--dtype` of vaecf.tools.gpu.DTYPES, the
batch size, K steps per dispatch (lax.scan) and M models (the vmapped beta sweep, users
counted x models). Each prints one JSON line as it ends; one that fails (out of device
memory at a large batch, say) prints its error and the run goes on. A table ends the run.
Batches are staged on the device before timing, so these are the device's figures, without
the input pipeline or the CPU-only GEMM references of vaecf.tools.benchmark. A time budget
skips the variants left once it is spent; a watchdog ends the process shortly after.

`:fed` times whole training passes over the matrix instead, as a run trains
(vaecf.tools.benchmark.time_fed_training): fed by the host pipeline, which builds and puts
every batch, and from device-resident data (vaecf.device_data), K steps a dispatch
(default train.steps_per_dispatch), in one order and padding. Its line has both users/s
(the second pass's; the first compiles) and device_over_host_fed_speed; M must be 1. In
the table it is two rows, host and device, with the first pass's seconds as compile s and
the timed pass's mean loss as loss@1.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import traceback

_T0 = time.perf_counter()

# Most wanted first (the budget skips the tail). JAX's default float32 products are
# TF32 on an H100/H200 (jax.lax.Precision), so float32_highest is the true-float32 row
# and tf32 (explicit) should match float32.
DEFAULT_VARIANTS = (
    'float32:500', 'bfloat16:500', 'float32:500:k4', 'bfloat16:500:k4', 'float32:500:m6',
    'bfloat16:500:m6', 'float32:2048', 'bfloat16:2048', 'float32:2048:fed',
    'bfloat16:2048:fed', 'float32:8192', 'bfloat16:8192', 'float32:500:fed',
    'bfloat16:500:fed', 'float32_highest:500', 'float32_highest:2048',
    'float32_highest:8192', 'tf32:500', 'tf32:8192')
QUICK_VARIANTS = ('float32:64', 'bfloat16:64', 'float32:64:k2', 'float32:64:m2',
                  'float32:64:fed', 'bfloat16:64:k4:fed')


def parse_variant(spec: str) -> dict:
  from vaecf.config import base_config
  from vaecf.tools import gpu
  parts = spec.strip().split(':')
  if len(parts) < 2 or parts[0] not in gpu.DTYPES:
    raise ValueError(f'variant {spec!r}: use dtype:batch[:kK][:mM][:fed], dtype one of '
                     f'{sorted(gpu.DTYPES)}')
  out = {'variant': spec.strip(), 'dtype': parts[0], 'batch_size': int(parts[1]),
         'steps_per_call': None, 'models': 1, 'fed': False}
  for p in parts[2:]:
    if p == 'fed':
      out['fed'] = True
    elif p[:1] == 'k':
      out['steps_per_call'] = int(p[1:])
    elif p[:1] == 'm':
      out['models'] = int(p[1:])
    else:
      raise ValueError(f'variant {spec!r}: unknown part {p!r} (kK, mM or fed)')
  if out['fed'] and out['models'] > 1:
    raise ValueError(f'variant {spec!r}: a fed pass trains one model')
  if out['steps_per_call'] is None:
    out['steps_per_call'] = base_config().train.steps_per_dispatch if out['fed'] else 1
  return out


def _config(v: dict, model: str):
  from vaecf.config import base_config
  from vaecf.tools import gpu
  config = base_config()
  config.model.name = model
  config.model.compute_dtype = gpu.DTYPES[v['dtype']].compute_dtype
  config.train.batch_size = v['batch_size']
  return config


def _device() -> dict:
  import jax
  from vaecf.tools import gpu
  d = jax.devices()[0]
  return {'platform': d.platform, 'device_kind': d.device_kind, **gpu.device_memory()}


def run_fed(v: dict, x, mesh, model: str = 'multvae') -> dict:
  """A `:fed` variant: users/s of a whole pass over x, host-fed and device-resident."""
  from vaecf.tools import benchmark, gpu
  config = _config(v, model)
  with gpu.matmul_precision(v['dtype']):
    fed = benchmark.time_fed_training(config, x, mesh, v['steps_per_call'])
  b = v['batch_size']
  return {**v, 'compute_dtype': config.model.compute_dtype,
          'matmul_precision': gpu.DTYPES[v['dtype']].matmul or 'default', **fed,
          'host_fed_step_s': b / fed['host_fed_users_per_s'],
          'device_data_step_s': b / fed['device_data_users_per_s'], **_device()}


def run_variant(v: dict, x, mesh, n_steps: int, measure_s: float, model: str = 'multvae'
                ) -> dict:
  """One variant's figures (the training step's, as vaecf.tools.benchmark times it)."""
  from vaecf.tools import benchmark, gpu
  if v['fed']:
    return run_fed(v, x, mesh, model)
  config = _config(v, model)
  k, m = v['steps_per_call'], v['models']
  sample = gpu.sample_users(x, gpu.users_needed(n_steps, k, v['batch_size']))
  with gpu.matmul_precision(v['dtype']):
    tr = gpu.time_train(config, sample, mesh, n_steps, steps_per_call=k,
                        sweep_models=m if m > 1 else 0, max_measure_s=measure_s)
  tr.pop('_host')
  del tr['_state']
  fl = benchmark.flops_per_user(config, x.shape[1], sample.nnz / sample.shape[0])
  return {**v, 'compute_dtype': config.model.compute_dtype,
          'matmul_precision': gpu.DTYPES[v['dtype']].matmul or 'default', **tr,
          'achieved_gflops': tr['users_per_s'] * fl['sparse'] / 1e9,
          'epoch_s': tr['step_s'] * x.shape[0] / v['batch_size'], **_device()}


def _fed_lines(r: dict, base: dict) -> list[str]:
  """A fed variant's two rows, host-fed and device-resident: 'vs f32' against `base`
  (the same feed's users/s in float32 at this batch and K), the first pass's seconds
  (with its compiles) in the compile column, the timed pass's mean loss in the loss's."""
  out = []
  device = (f"device-resident pass, {r['device_steps_per_dispatch']} steps a dispatch: "
            f"{r['device_over_host_fed_speed']:.2f}x host-fed")
  for name, note in (('host_fed', 'host-fed pass'), ('device_data', device)):
    rel = f"{r[f'{name}_users_per_s'] / base[name]:.2f}x" if name in base else ''
    label = f"{r['variant']} {'host' if name == 'host_fed' else 'device'}"
    out.append(f"{label:<26} {r[f'{name}_users_per_s']:>12,.0f} "
               f"{r[f'{name}_step_s'] * 1e3:>9.2f} {r[f'{name}_first_pass_s']:>9.1f} "
               f"{r[f'{name}_loss']:>9.3f} {rel:>7}  {note}")
  return out


def table(rows: list[dict]) -> str:
  """Users/s per variant, and relative to float32 at the same batch (one model, K=1;
  a fed variant's rows relative to the float32 fed rows of its batch and K)."""
  base, fed_base = {}, {}
  for r in rows:
    if ('users_per_s' in r and r['dtype'] == 'float32' and r['steps_per_call'] == 1
        and r['models'] == 1):
      base.setdefault(r['batch_size'], r['users_per_s'])
    if 'device_over_host_fed_speed' in r and r['dtype'] == 'float32':
      fed_base.setdefault((r['batch_size'], r['steps_per_call']),
                          {n: r[f'{n}_users_per_s'] for n in ('host_fed', 'device_data')})
  lines = [f"{'variant':<26} {'users/s':>12} {'ms/step':>9} {'compile s':>9} "
           f"{'loss@1':>9} {'vs f32':>7}  note"]
  for r in rows:
    if 'device_over_host_fed_speed' in r:
      lines += _fed_lines(r, fed_base.get((r['batch_size'], r['steps_per_call']), {}))
    elif 'users_per_s' in r:
      rel = r['users_per_s'] / base[r['batch_size']] if r['batch_size'] in base else None
      lines.append(f"{r['variant']:<26} {r['users_per_s']:>12,.0f} {r['step_s'] * 1e3:>9.2f} "
                   f"{r['compile_s']:>9.1f} {r['loss_first']:>9.3f} "
                   f"{'' if rel is None else f'{rel:.2f}x':>7}"
                   + (f"  users x {r['models']} models" if r['models'] > 1 else ''))
    else:
      note = 'OUT OF MEMORY' if r.get('oom') else r.get('skipped') or r.get('error', '')
      lines.append(f"{r['variant']:<26} {'-':>12} {'-':>9} {'-':>9} {'-':>9} {'-':>7}  "
                   f"{note[:80]}")
  return '\n'.join(lines)


def main(variants, shape: str, n_steps: int, budget_s: float, measure_s: float,
         model: str = 'multvae', out=sys.stdout, watchdog: bool = False,
         start: float | None = None) -> list[dict]:
  """Runs the variants in order and returns their rows. The budget counts from `start`
  (perf_counter; default now); `watchdog` ends the process (os._exit) 45 s after it."""
  start = time.perf_counter() if start is None else start
  import jax
  from vaecf import distributed
  from vaecf.tools import benchmark, gpu
  specs = [parse_variant(s) for s in variants]
  rows: list[dict] = []

  def emit(row):
    rows.append(row)
    print(json.dumps(row), file=out, flush=True)

  def bail():
    print(f'watchdog: {budget_s + 45:.0f}s passed; ending the run', file=out, flush=True)
    print(table(rows), file=out, flush=True)
    os._exit(3)
  timer = threading.Timer(max(budget_s + 45 - (time.perf_counter() - start), 1), bail)
  timer.daemon = True
  if watchdog:
    timer.start()
  d = jax.devices()[0]
  print(f'jax {jax.__version__}: {len(jax.devices())} x {d.platform} ({d.device_kind}); '
        f'{len(specs)} variants, budget {budget_s:.0f}s', file=out, flush=True)
  n_users, n_items, mean_len = benchmark.SHAPES[shape]
  x = benchmark.synthetic_clicks(n_users, n_items, mean_len)
  print(f'{shape}: {n_users:,} users x {n_items:,} items, {x.nnz:,} clicks '
        f'(at {time.perf_counter() - start:.1f}s)', file=out, flush=True)
  mesh = distributed.make_mesh(jax.devices()[:1])
  for v in specs:
    elapsed = time.perf_counter() - start
    if elapsed > budget_s:
      emit({**v, 'skipped': f'time budget: {elapsed:.0f}s of {budget_s:.0f}s spent'})
      continue
    t = time.perf_counter()
    try:
      row = run_variant(v, x, mesh, n_steps, measure_s, model)
    except Exception as e:  # one variant's failure (OOM above all) ends only that variant
      row = {**v, 'error': f'{type(e).__name__}: {str(e)[:600]}',
             'oom': gpu.is_out_of_memory(e)}
      if not row['oom']:
        traceback.print_exc(file=sys.stderr)
    row['shape'], row['variant_s'] = shape, time.perf_counter() - t
    emit(row)
    gc.collect()
    jax.clear_caches()
  timer.cancel()
  print(f'total {time.perf_counter() - start:.0f}s', file=out)
  print(table(rows), file=out, flush=True)
  return rows


def _define_flags():
  from absl import flags
  from vaecf.tools import benchmark
  flags.DEFINE_bool('quick', False, 'Tiny shape, 2 steps, 6 variants: a check on a CPU.')
  flags.DEFINE_enum('shape', None, list(benchmark.SHAPES), 'Paper shape (default ml20m).')
  flags.DEFINE_list('variants', None, 'dtype:batch[:kK][:mM][:fed], ... (default: the '
                    'grid).')
  flags.DEFINE_integer('steps', None, 'Timed steps per variant (default 30; quick 2).')
  flags.DEFINE_float('budget_s', 240.0, 'Start no variant after this many seconds.')
  flags.DEFINE_float('measure_s', 5.0, "A variant's timed loop stops after this.")
  flags.DEFINE_enum('model', 'multvae', ['multvae', 'multdae'], 'Model.')


def _main(argv):
  from absl import app, flags
  from vaecf import console
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  console.setup()
  f = flags.FLAGS
  main(f.variants or (QUICK_VARIANTS if f.quick else DEFAULT_VARIANTS),
       f.shape or ('tiny' if f.quick else 'ml20m'), f.steps or (2 if f.quick else 30),
       f.budget_s, f.measure_s, f.model, watchdog=True, start=_T0)


def cli():
  from vaecf import console
  _define_flags()
  console.cli(_main, __name__)


if __name__ == '__main__':
  cli()
