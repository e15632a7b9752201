"""The benchmark runs the real step and evaluator and ends with one JSON line."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

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
       '--eval_users=200', '--compare_dense'],
      cwd=REPO, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for key in ('train_users_per_s', 'epoch_s', 'achieved_gflops', 'peak_matmul_gflops', 'ratio',
              'eval_users_per_s', 'compile_s', 'peak_rss_gb', 'sparse_over_dense_speed',
              'decoder_forward_gflops', 'decoder_weight_grad_gflops',
              'decoder_input_grad_gflops', 'first_layer_gather_gflops',
              'first_layer_scatter_gflops', 'adam_s', 'adam_fused_s',
              'input_pipeline_s_per_batch'):
    assert np.isfinite(out[key]) and out[key] > 0, key
  # The peak is the best of XLA's and NumPy's GEMMs, each printed and in the JSON.
  for src in ('xla_gemm_gflops', 'numpy_gemm_gflops', 'numpy_clean_env_gemm_gflops'):
    assert set(out[src]) == {'forward', 'weight_grad', 'input_grad'}, src
  best = max(max(out[src].values()) for src in
             ('xla_gemm_gflops', 'numpy_gemm_gflops', 'numpy_clean_env_gemm_gflops'))
  assert out['peak_matmul_gflops'] == best and out['peak_source'] in ('xla', 'numpy',
                                                                      'numpy_clean_env')
  assert isinstance(out['xla_flags'], str) and isinstance(out['vaecf_xla_flags'], list)
  assert 'NumPy' in proc.stdout and 'Adam update' in proc.stdout


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
