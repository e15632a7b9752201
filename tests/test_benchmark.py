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
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for key in ('train_users_per_s', 'epoch_s', 'achieved_gflops', 'peak_matmul_gflops', 'ratio',
              'eval_users_per_s', 'compile_s', 'peak_rss_gb', 'sparse_over_dense_speed'):
    assert np.isfinite(out[key]) and out[key] > 0, key
