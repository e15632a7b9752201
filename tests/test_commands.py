"""Every command installs as a console script whose --help exits 0 from any directory and
says what the command does, its own flags and what it writes; an installed vaecf-tune
runs on the embedded data from the checkout."""
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['scripts']
# Each command's own flags (one is enough to show they are its, not absl's).
OWN_FLAG = {'vaecf-train': '--workdir', 'vaecf-recommend': '--items',
            'vaecf-data': '--export_dir', 'vaecf-benchmark': '--batch_size',
            'vaecf-activity': '--workdirs', 'vaecf-plot': '--workdir', 'vaecf-tune': '--budget',
            'vaecf-sweep': '--models_per_pass', 'vaecf-select-beta': '--workdir',
            'vaecf-paper-table': '--likelihoods', 'vaecf-ensemble': '--members',
            'vaecf-halving': '--replay'}


def test_every_tool_is_a_script():
  assert set(SCRIPTS) == set(OWN_FLAG)


@pytest.fixture(scope='module')
def venv(tmp_path_factory):
  """A fresh venv with `pip install .` (the dependencies come from the running Python)."""
  d = tmp_path_factory.mktemp('venv')
  wheels = tmp_path_factory.mktemp('wheel')
  # Built as `pip install .` builds it (pyproject's build backend, isolated), then
  # installed into the venv, whose dependencies come from this Python's site-packages.
  proc = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
                         '--disable-pip-version-check', '.', '-w', str(wheels)], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  if proc.returncode and ('connection' in proc.stderr.lower() or
                          'no matching distribution' in proc.stderr.lower()):
    pytest.skip(f'pip could not fetch the build backend: {proc.stderr[-300:]}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', str(d)], check=True,
                 timeout=300)
  (wheel,) = wheels.glob('vaecf-*.whl')
  proc = subprocess.run([str(d / 'bin' / 'python'), '-m', 'pip', 'install', '-q', '--no-deps',
                         '--disable-pip-version-check', str(wheel)],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return d


def _env():
  return {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}


@pytest.mark.slow
def test_each_scripts_help_exits_0_from_any_directory(venv, tmp_path):
  where = subprocess.run([str(venv / 'bin' / 'python'), '-c', 'import vaecf; print(vaecf.__file__)'],
                         cwd=tmp_path, capture_output=True, text=True, env=_env())
  assert str(venv) in where.stdout, f'not the installed copy: {where.stdout} {where.stderr}'
  for script, target in SCRIPTS.items():
    proc = subprocess.run([str(venv / 'bin' / script), '--help'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, (script, proc.stdout[-1000:], proc.stderr[-2000:])
    module = __import__(target.split(':')[0], fromlist=['_'])
    first_line = module.__doc__.strip().splitlines()[0]
    assert proc.stdout.startswith(first_line), (script, proc.stdout[:300])
    assert OWN_FLAG[script] in proc.stdout, (script, proc.stdout)
    assert 'writ' in proc.stdout.lower(), f'{script} --help does not say what it writes'


@pytest.mark.slow
def test_the_installed_tune_runs_on_the_embedded_data(venv, tmp_path):
  proc = subprocess.run(
      [str(venv / 'bin' / 'vaecf-tune'), '--config=configs/default.py',
       f'--workdir={tmp_path / "tune"}', '--models=ease,multvae', '--budget=2',
       '--config.train.epochs=2', f'--config.data.cache_dir={tmp_path / "cache"}'],
      cwd=REPO, capture_output=True, text=True, timeout=600, env=_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  state = json.loads((tmp_path / 'tune' / 'tune.json').read_text())
  assert set(state['models']) == {'ease', 'multvae'} and state['select'] == 'ndcg@100'
  for name in ('ease', 'multvae'):
    assert state['models'][name]['points'] == 2
    assert 0 < state['models'][name]['test']['ndcg@100'] < 1
