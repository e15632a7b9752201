"""Two processes with one CPU device each train exactly as one process with two devices."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'tests' / 'helpers' / 'multiprocess_train.py'


def _env(n_devices):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO),
             XLA_FLAGS=f'--xla_force_host_platform_device_count={n_devices}')
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_two_devices(tmp_path):
  cache = str(tmp_path / 'cache')
  single = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / 'one'), cache],
                          env=_env(2), capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  addr = f'127.0.0.1:{_free_port()}'
  procs = [subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / 'two'), cache, addr,
                             '2', str(i)], env=_env(1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    assert '2 x cpu' in out and 'over 2 process(es)' in out
  result = lambda text: float(text.split('RESULT')[1].split()[0])
  assert result(outs[0][0]) == pytest.approx(result(single.stdout), rel=1e-5)
  assert result(outs[1][0]) == pytest.approx(result(single.stdout), rel=1e-5)
  # Both runs' final checkpoints hold the same parameters.
  from vaecf import checkpoints
  def params(wd):
    return checkpoints.load_state(wd)[0]['params']
  import jax
  for a, b in zip(jax.tree.leaves(params(tmp_path / 'one')), jax.tree.leaves(params(tmp_path / 'two'))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert (tmp_path / 'two' / 'results.json').exists()
  assert len((tmp_path / 'two' / 'metrics.jsonl').read_text().splitlines()) == 2
