"""The benchmark runs the real step and evaluator and ends with one JSON line."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vaecf.tools import benchmark
from vaecf.config import base_config

REPO = Path(__file__).resolve().parents[1]


def test_synthetic_clicks_shape_and_lengths():
  x = benchmark.synthetic_clicks(3000, 500, 30.0, seed=1)
  lengths = np.diff(x.indptr)
  assert x.shape == (3000, 500) and set(np.unique(x.data)) == {1.0}
  assert lengths.min() >= 5 and 15 < lengths.mean() < 45
  counts = np.sort(np.asarray(x.sum(0)).ravel())[::-1]
  assert counts[:50].sum() > 0.25 * x.nnz  # heavy-tailed popularity
  y = benchmark.synthetic_clicks(3000, 500, 30.0, seed=1)
  assert (x != y).nnz == 0


def test_flops_count_matches_hand_count():
  c = base_config()
  fl = benchmark.flops_per_user(c, 1000, 10.0)
  enc_rest = 6 * 600 * 400
  dec = 6 * (200 * 600 + 600 * 1000)
  assert fl['sparse'] == 4 * 10 * 600 + enc_rest + dec
  assert fl['dense'] == 4 * 1000 * 600 + enc_rest + dec


def test_benchmark_runs_and_prints_json():
  proc = subprocess.run(
      [sys.executable, '-m', 'vaecf.tools.benchmark', '--shape=tiny', '--steps=3', '--batch_size=64',
       '--eval_users=200', '--compare_dense', '--device_data', '--steps_per_dispatch=2'],
      cwd=REPO, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for key in ('train_users_per_s', 'epoch_s', 'achieved_gflops', 'peak_matmul_gflops', 'ratio',
              'eval_users_per_s', 'compile_s', 'peak_rss_gb', 'sparse_over_dense_speed',
              'decoder_forward_gflops', 'decoder_weight_grad_gflops',
              'decoder_input_grad_gflops', 'first_layer_gather_gflops',
              'first_layer_scatter_gflops', 'adam_s', 'adam_fused_s',
              'input_pipeline_s_per_batch', 'input_pipeline_users_per_s', 'loss_first',
              'staged_mb'):
    assert np.isfinite(out[key]) and out[key] > 0, key
  # The peak is the best of XLA's and NumPy's GEMMs, each printed and in the JSON.
  for src in ('xla_gemm_gflops', 'numpy_gemm_gflops', 'numpy_clean_env_gemm_gflops'):
    assert set(out[src]) == {'forward', 'weight_grad', 'input_grad'}, src
  best = max(max(out[src].values()) for src in
             ('xla_gemm_gflops', 'numpy_gemm_gflops', 'numpy_clean_env_gemm_gflops'))
  assert out['peak_matmul_gflops'] == best and out['peak_source'] in ('xla', 'numpy',
                                                                      'numpy_clean_env')
  assert isinstance(out['xla_flags'], str) and isinstance(out['vaecf_xla_flags'], list)
  assert isinstance(out['malloc'], dict)  # what the entry point set, or {} where not glibc
  assert 'NumPy' in proc.stdout and 'Adam update' in proc.stdout
  # Host-fed and device-resident passes, same steps on the same batches: the same loss.
  for key in ('host_fed_users_per_s', 'device_data_users_per_s', 'device_over_host_fed_speed',
              'device_data_mb', 'device_data_nnz_per_shard'):
    assert np.isfinite(out[key]) and out[key] > 0, key
  assert out['host_fed_loss'] == out['device_data_loss'] and out['fed_pass_users'] == 4 * 64
  assert 'device-resident' in proc.stdout


def test_xla_flags_append_respect_user_and_opt_out(monkeypatch):
  from vaecf import xla_flags
  monkeypatch.setattr(xla_flags, 'CPU_FLAGS', ('--xla_a=1', '--xla_b=true'))
  env = {'XLA_FLAGS': '--xla_b=false --xla_c=2'}
  assert xla_flags._name('--xla_b=false') == 'xla_b'
  # Only checks names against the user's XLA_FLAGS; JAX's backend in this test
  # process may be up already, which apply() refuses, so test the pure part.
  monkeypatch.setattr('jax._src.xla_bridge.backends_are_initialized', lambda: False)
  assert xla_flags.apply(env) == ['--xla_a=1']
  assert env['XLA_FLAGS'] == '--xla_b=false --xla_c=2 --xla_a=1'
  env = {'VAECF_XLA_FLAGS': '0'}
  assert xla_flags.apply(env) == [] and 'XLA_FLAGS' not in env
  env = {'VAECF_XLA_FLAGS': 'onednn'}
  assert xla_flags.apply(env) == list(xla_flags.PRESETS['onednn'])
  assert env['XLA_FLAGS'] == ' '.join(xla_flags.PRESETS['onednn'])
  monkeypatch.setattr('jax._src.xla_bridge.backends_are_initialized', lambda: True)
  assert xla_flags.apply({}) == []


class _FakeLibc:
  def __init__(self, refuse=()):
    self.calls, self.refuse = [], refuse

  def mallopt(self, code, value):
    self.calls.append((code, value))
    return 0 if code in self.refuse else 1


def test_host_malloc_sets_opts_out_and_defers_to_glibc_tunables(monkeypatch):
  from vaecf import host_malloc
  monkeypatch.setattr('platform.system', lambda: 'Linux')
  monkeypatch.setattr('platform.libc_ver', lambda: ('glibc', '2.36'))
  libc = _FakeLibc()
  assert host_malloc.apply({}, _libc=libc) == host_malloc.SETTINGS == host_malloc.applied()
  assert libc.calls == [(-8, 1), (-4, 0), (-1, 2**31 - 1)]  # glibc's M_* numbers
  for env in ({'VAECF_MALLOC': '0'}, {'VAECF_MALLOC': 'off'},
              {'GLIBC_TUNABLES': 'glibc.malloc.mmap_max=0'}):
    libc = _FakeLibc()
    assert host_malloc.apply(env, _libc=libc) == {} and libc.calls == [], env
    assert host_malloc.applied() == {}
  with pytest.raises(ValueError, match='VAECF_MALLOC'):
    host_malloc.apply({'VAECF_MALLOC': 'maybe'}, _libc=_FakeLibc())
  # A refused setting is not reported as set.
  assert 'M_ARENA_MAX' not in host_malloc.apply({}, _libc=_FakeLibc(refuse=(-8,)))
  monkeypatch.setattr('platform.libc_ver', lambda: ('musl', ''))
  libc = _FakeLibc()
  assert host_malloc.apply({}, _libc=libc) == {} and libc.calls == []


def test_importing_vaecf_sets_no_process_settings():
  """Only entry points call vaecf.process.prepare(); a library import changes nothing."""
  code = ('import vaecf, vaecf.train, vaecf.sweep, vaecf.tools.tune, vaecf.models.recvae; '
          'from vaecf import host_malloc, xla_flags, process; '
          'assert host_malloc.applied() == {} and xla_flags.applied() == [], process.settings(); '
          's = process.prepare(); print(sorted(s["malloc"]))')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                        timeout=600, env={**os.environ, 'VAECF_MALLOC': '1'})
  assert proc.returncode == 0, proc.stderr[-2000:]
  if sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc':
    assert proc.stdout.split() == ["['M_ARENA_MAX',", "'M_MMAP_MAX',", "'M_TRIM_THRESHOLD']"]


def test_multi_step_equals_single_steps():
  """K steps in one lax.scan dispatch are the K single steps, state and metrics."""
  import jax
  from vaecf import distributed, models, steps
  from vaecf.tools import gpu
  c = base_config()
  c.model.hidden_dims, c.model.latent_dim, c.train.batch_size = (16,), 4, 32
  x = benchmark.synthetic_clicks(200, 60, 10.0)
  mesh = distributed.make_mesh(jax.devices()[:1])
  host = gpu.host_batches(x, 32, 1, 4)
  assert len({b.vals.shape for b in host}) == 1  # one shape: stackable, one compile
  step, state, sched = gpu.build_step(c, 60, mesh)
  step = steps.make_train_step(models.build(c, 60), steps.make_optimizer(c), mesh, 0,
                               donate=False)
  s1, losses = state, []
  for b in gpu.stage(host, mesh, 1):
    s1, m = step(s1, b, sched)
    losses.append(float(m['loss']))
  multi = gpu.make_multi_step(step, donate=False)
  s2 = state
  for stacked in gpu.stage(host, mesh, 2):
    s2, m2 = multi(s2, stacked, sched)
    assert m2['loss'].shape == (2,)
  np.testing.assert_allclose(np.asarray(m2['loss']), losses[2:], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_gpu_bench_quick_mode_prints_a_json_line_per_variant():
  """The prepared accelerator run, in its CPU-sized mode: float32, bfloat16 with two steps
  a dispatch, a 2-model sweep, and a training pass host-fed and device-resident. No timing
  is asserted, only that the figures exist and that bf16's loss is float32's within a
  loose tolerance."""
  proc = subprocess.run(
      [sys.executable, '-m', 'vaecf.tools.gpu_bench', '--quick',
       '--variants=float32:64,bfloat16:64:k2,float32:64:m2,bfloat16:64:k4:fed'],
      cwd=REPO, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith('{')]
  assert [r['variant'] for r in rows] == ['float32:64', 'bfloat16:64:k2', 'float32:64:m2',
                                          'bfloat16:64:k4:fed']
  rows, fed = rows[:3], rows[3]
  for r in rows:
    for key in ('users_per_s', 'step_s', 'compile_s', 'loss_first', 'loss', 'achieved_gflops',
                'staged_mb'):
      assert np.isfinite(r[key]) and r[key] > 0, (r['variant'], key)
    assert r['shape'] == 'tiny' and r['platform'] == 'cpu'
  f32, bf16, sweep = rows
  assert bf16['compute_dtype'] == 'bfloat16' and bf16['steps_per_call'] == 2
  assert bf16['steps_timed'] % 2 == 0
  assert abs(bf16['loss_first'] - f32['loss_first']) < 0.02 * abs(f32['loss_first'])
  # The sweep's models start from the single run's state on its batch: the same loss.
  assert sweep['models'] == 2 and np.isclose(sweep['loss_first'], f32['loss_first'], rtol=1e-5)
  # A whole pass of the tiny matrix each way: the same batches, so the same loss.
  for key in ('host_fed_users_per_s', 'device_data_users_per_s', 'device_over_host_fed_speed'):
    assert np.isfinite(fed[key]) and fed[key] > 0, key
  assert np.isclose(fed['device_over_host_fed_speed'],
                    fed['device_data_users_per_s'] / fed['host_fed_users_per_s'])
  assert fed['fed_pass_users'] == 2000 and fed['device_steps_per_dispatch'] == 4
  assert fed['compute_dtype'] == 'bfloat16' and fed['platform'] == 'cpu'
  assert np.isclose(fed['host_fed_loss'], fed['device_data_loss'], rtol=1e-5)
  assert 'users/s' in proc.stdout and 'vs f32' in proc.stdout  # the summary table
  assert 'bfloat16:64:k4:fed device' in proc.stdout and 'x host-fed' in proc.stdout


def test_gpu_bench_reports_out_of_memory_and_the_budget_and_goes_on(monkeypatch):
  import io
  from vaecf.tools import gpu_bench

  def fake(v, x, mesh, n_steps, measure_s, model):
    if v['batch_size'] == 8192:
      raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9 GiB')
    if v['fed']:
      speed = 300.0 if v['dtype'] == 'bfloat16' else 200.0
      return {**v, **{f'{n}_{k}': val for n in ('host_fed', 'device_data') for k, val in (
                  ('first_pass_s', 9.0), ('step_s', 0.02), ('loss', 2.0))},
              'host_fed_users_per_s': 100.0, 'device_data_users_per_s': speed,
              'device_over_host_fed_speed': speed / 100.0,
              'device_steps_per_dispatch': v['steps_per_call']}
    return {**v, 'users_per_s': 100.0, 'step_s': 0.01, 'compile_s': 1.0, 'loss_first': 1.0}
  monkeypatch.setattr(gpu_bench, 'run_variant', fake)
  out = io.StringIO()
  rows = gpu_bench.main(['float32:500', 'bfloat16:8192', 'bfloat16:500:k4', 'float32:500:fed',
                         'bfloat16:500:fed'], 'tiny', 2, 600.0, 1.0, out=out)
  assert [('error' in r, r.get('oom')) for r in rows] == [(False, None), (True, True),
                                                          (False, None), (False, None),
                                                          (False, None)]
  assert 'OUT OF MEMORY' in out.getvalue() and '1.00x' in out.getvalue()
  # A fed variant is two rows; its default K is the trainer's steps a dispatch.
  table = out.getvalue().split('note')[-1]
  assert rows[3]['steps_per_call'] == base_config().train.steps_per_dispatch
  assert 'float32:500:fed host' in table and '2.00x host-fed' in table
  assert '3.00x host-fed' in table and '1.50x' in table  # bf16's device row vs f32's
  with pytest.raises(ValueError, match='one model'):
    gpu_bench.parse_variant('float32:500:m6:fed')
  rows = gpu_bench.main(['float32:500'], 'tiny', 2, 0.0, 1.0, out=io.StringIO())
  assert 'time budget' in rows[0]['skipped']


def test_torch_reference_trains_where_torch_is_installed():
  pytest.importorskip('torch', reason='PyTorch is optional (only --compare_torch uses it)')
  from vaecf.tools import torch_reference
  x = benchmark.synthetic_clicks(400, 120, 12.0)
  out = torch_reference.time_train(x, 64, 4, hidden=32, latent=8, warmup=1)
  assert out['users_per_s'] > 0 and np.isfinite(out['loss']) and out['threads'] >= 1


def test_compare_torch_without_torch_says_how_to_get_it(monkeypatch):
  import builtins
  from vaecf.tools import torch_reference
  real = builtins.__import__

  def no_torch(name, *a, **k):
    if name == 'torch':
      raise ImportError('No module named torch')
    return real(name, *a, **k)
  monkeypatch.setattr(builtins, '__import__', no_torch)
  with pytest.raises(SystemExit, match='pip install torch'):
    torch_reference.time_train(benchmark.synthetic_clicks(50, 30, 6.0), 16, 1)
