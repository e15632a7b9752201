"""The tune and ensemble commands under hostile input (issue 23): they keep their records,
refuse what they cannot do right before writing anything, and answer with one `error:`
line, never a traceback. Each test here failed on the code before that issue."""
import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vaecf import console, presets
from vaecf.tools import ensemble, tune
from test_presets import clicks_csv

REPO = Path(__file__).resolve().parents[1]


def csv_config(tmp: Path, data: Path, model='multvae'):
  c = presets.compose(model, 'csv')
  c.data.path, c.data.cache_dir = str(data), str(tmp / 'cache')
  c.model.hidden_dims, c.model.latent_dim = (16,), 4
  c.train.epochs, c.train.batch_size = 1, 64
  return c


def snapshot(folder: Path) -> dict[str, bytes]:
  """Every file of a folder but its lock, byte for byte."""
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*'))
          if p.is_file() and p.name != '.lock'}


def refused(capsys, fn, *args, **kwargs) -> str:
  """What a command prints when `fn` fails under the commands' guard: one error line, exit 1."""
  with pytest.raises(SystemExit) as e:
    console.guard(fn, *args, **kwargs)
  err = capsys.readouterr().err
  assert e.value.code == 1 and err.startswith('error: ') and 'Traceback' not in err, err
  assert 'unexpected' not in err, f'an expected failure reported as a fault: {err}'
  return err


@pytest.fixture(scope='module')
def tuned(tmp_path_factory):
  """A finished tune of EASE, popularity and Mult-VAE on a small CSV."""
  tmp = tmp_path_factory.mktemp('tuned')
  data = clicks_csv(tmp / 'clicks.csv')
  c = csv_config(tmp, data)
  tune.run(c, tmp / 'tune', ['ease', 'popularity', 'multvae'], budget=2)
  return tmp, data, c


# -- 2, 3: other data or another config -------------------------------------------------

def test_a_tune_rerun_on_other_data_or_settings_is_refused_with_its_records_kept(
    tuned, tmp_path, capsys):
  tmp, _, c = tuned
  before = snapshot(tmp / 'tune')
  other = csv_config(tmp_path, clicks_csv(tmp_path / 'other.csv', seed=1))
  err = refused(capsys, tune.run, other, tmp / 'tune', ['ease'], budget=6)
  assert 'another split' in err
  bigger = c.copy_and_resolve_references()
  bigger.train.batch_size = 16
  err = refused(capsys, tune.run, bigger, tmp / 'tune', ['multvae'], budget=3)
  assert 'multvae: train.batch_size: 64 -> 16' in err
  assert snapshot(tmp / 'tune') == before
  # Where the data lives may change: the same split elsewhere goes on.
  moved = c.copy_and_resolve_references()
  moved.data.path = str(tmp_path / 'moved.csv')
  Path(moved.data.path).write_bytes(Path(c.data.path).read_bytes())
  state = tune.run(moved, tmp / 'tune', ['ease'], budget=2)
  assert state['models']['ease']['chosen']


def test_an_ensemble_on_other_data_is_refused(tuned, tmp_path, capsys):
  tmp, _, _ = tuned
  before = snapshot(tmp / 'tune')
  other = csv_config(tmp_path, clicks_csv(tmp_path / 'other.csv', seed=1))
  err = refused(capsys, ensemble.run, other, tmp / 'tune', ['ease', 'multvae'])
  assert 'another split' in err
  assert snapshot(tmp / 'tune') == before


# -- 6, and the tune's tracebacks: refused before anything is read or written -----------

@pytest.mark.parametrize('models, budget, grid, want', [
    (['ease'], 0, '', '--budget=0'),
    (['ease'], -3, '', '--budget=-3'),
    (['ease', 'nosuch'], 2, '', "unknown model 'nosuch'"),
    (['ease', 'ease'], 2, '', 'name each model once'),
    (['hvamp'], 2, '', 'hvamp has no knob'),
    (['recvae'], 2, '', 'model.gamma'),  # a Mult-VAE config lacks RecVAE's own keys
    (['ease'], 2, 'lam=1,2', 'config.sweep.grid'),
])
def test_a_tune_it_cannot_do_is_refused_before_anything(tmp_path, capsys, models, budget,
                                                        grid, want):
  c = csv_config(tmp_path, tmp_path / 'never_read.csv')
  if models == ['hvamp']:
    c = csv_config(tmp_path, tmp_path / 'never_read.csv', 'hvamp')
    c.model.hidden_dims = (16, 16)
  c.sweep.grid = grid
  err = refused(capsys, tune.run, c, tmp_path / 'tune', models, budget)
  assert want in err
  assert not (tmp_path / 'tune').exists() and not (tmp_path / 'cache').exists()


@pytest.mark.parametrize('content', ['{"models": {"ease": ', '[]', '{"dataset": "x"}'])
def test_a_damaged_tune_record_is_named_and_left_as_it_is(tuned, tmp_path, capsys, content):
  _, data, c = tuned
  (tmp_path / 'tune').mkdir()
  (tmp_path / 'tune' / 'tune.json').write_text(content)
  for call in (lambda: tune.run(c, tmp_path / 'tune', ['ease'], 2),
               lambda: ensemble.run(c, tmp_path / 'tune', ['ease', 'popularity'])):
    err = refused(capsys, call)
    assert str(tmp_path / 'tune' / 'tune.json') in err
  assert (tmp_path / 'tune' / 'tune.json').read_text() == content


# -- the ensemble's tracebacks -----------------------------------------------------------

def test_an_ensemble_it_cannot_do_is_refused_by_name(tuned, capsys):
  tmp, _, c = tuned
  before = snapshot(tmp / 'tune')
  for members, steps, want in [(['ease'], 10, 'two or more distinct'),
                               (['ease', 'ease'], 10, 'two or more distinct'),
                               (['ease', 'multvae'], 0, '--steps=0'),
                               (['ease', 'slim'], 10, "no finished tune of 'slim'")]:
    assert want in refused(capsys, ensemble.run, c, tmp / 'tune', members, steps)
  state = json.loads((tmp / 'tune' / 'tune.json').read_text())
  state['models']['wmf'] = {'rounds': []}  # a tune that was killed before it finished
  (tmp / 'tune' / 'tune.json').write_text(json.dumps(state))
  assert "no finished tune of 'wmf'" in refused(capsys, ensemble.run, c, tmp / 'tune',
                                                ['ease', 'wmf'])
  (tmp / 'tune' / 'tune.json').write_bytes(before['tune.json'])
  assert snapshot(tmp / 'tune') == before


def test_a_moved_tune_opens_its_own_rounds(tuned, tmp_path):
  import shutil
  tmp, _, c = tuned
  shutil.copytree(tmp / 'tune', tmp_path / 'moved')
  state = json.loads((tmp_path / 'moved' / 'tune.json').read_text())
  detail = state['models']['multvae']['rounds'][0]['details'][0]
  assert not Path(detail['workdir']).is_absolute()
  shutil.rmtree(tmp / 'tune' / 'multvae')  # the original's rounds are gone...
  try:
    out = ensemble.run(c, tmp_path / 'moved', ['ease', 'multvae'], steps=2)
  finally:
    shutil.copytree(tmp_path / 'moved' / 'multvae', tmp / 'tune' / 'multvae')
  assert 0 < out['test']['ndcg@100'] < 1  # ...and the copy scores from its own


# -- 1: two tunes in one folder ------------------------------------------------------------

def _held(lock: Path) -> bool:
  if not lock.exists():
    return False
  with open(lock) as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      return True
    fcntl.flock(f, fcntl.LOCK_UN)
  return False


def _tune_cmd(data: Path, wd: Path, cache: Path, models: str, *extra):
  return [sys.executable, '-m', 'vaecf.tools.tune', '--config=configs/multvae.py:csv',
          f'--config.data.path={data}', f'--config.data.cache_dir={cache}',
          f'--workdir={wd}', f'--models={models}', '--budget=2',
          '--config.model.hidden_dims=(16,)', '--config.model.latent_dim=4',
          '--config.train.batch_size=64', *extra]


@pytest.mark.slow
def test_two_tunes_in_one_folder_lose_no_record(tmp_path):
  data = clicks_csv(tmp_path / 'clicks.csv')
  wd = tmp_path / 'tune'
  first = subprocess.Popen(_tune_cmd(data, wd, tmp_path / 'c1', 'multvae',
                                     '--config.train.epochs=4'),
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  t0 = time.time()
  while not _held(wd / '.lock'):
    assert first.poll() is None and time.time() - t0 < 300, first.communicate()
    time.sleep(0.05)
  second = subprocess.run(_tune_cmd(data, wd, tmp_path / 'c2', 'ease'), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  assert second.returncode == 1 and 'in use by another run' in second.stderr, second.stderr
  assert 'Traceback' not in second.stderr
  out, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-3000:]
  again = subprocess.run(_tune_cmd(data, wd, tmp_path / 'c2', 'ease'), cwd=REPO,
                         capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  state = json.loads((wd / 'tune.json').read_text())
  assert {n for n, e in state['models'].items() if 'test' in e} == {'multvae', 'ease'}


# -- 7: a tune round's module runs only when trusted ---------------------------------------

@pytest.mark.slow
def test_an_ensemble_imports_a_rounds_module_only_when_trusted(tmp_path):
  data = clicks_csv(tmp_path / 'clicks.csv')
  wd = tmp_path / 'tune'
  made = subprocess.run(
      [sys.executable, '-m', 'vaecf.tools.tune', '--config=configs/swish_vae.py:csv',
       f'--config.data.path={data}', f'--config.data.cache_dir={tmp_path}', f'--workdir={wd}',
       '--models=swish_vae,ease', '--budget=1', '--config.model.hidden_dims=(16,)',
       '--config.model.latent_dim=4', '--config.train.epochs=1'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert made.returncode == 0, made.stderr[-3000:]
  code = ('import sys\n'
          'from vaecf import presets, models\n'
          'from vaecf.tools import ensemble\n'
          f'c = presets.compose("multvae", "csv"); c.data.path = {str(data)!r}\n'
          f'c.data.cache_dir = {str(tmp_path)!r}\n'
          'try:\n'
          f'  ensemble.run(c, {str(wd)!r}, ["swish_vae", "ease"], steps=2)\n'
          '  raise SystemExit("opened without trust_code")\n'
          'except models.UntrustedCode as e:\n'
          '  assert "trust_code" in str(e) and "experiments.swish_vae" in str(e), e\n'
          'assert "experiments.swish_vae" not in sys.modules\n'
          f'out = ensemble.run(c, {str(wd)!r}, ["swish_vae", "ease"], steps=2, trust_code=True)\n'
          'assert "experiments.swish_vae" in sys.modules and out["test"]["ndcg@100"] > 0\n')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_the_commands_answer_with_one_error_line(tuned, tmp_path):
  tmp, data, _ = tuned
  cases = [
      (_tune_cmd(data, tmp_path / 't', tmp_path / 'c', 'ease', '--models_per_pass=-1'),
       'models_per_pass=-1'),
      (_tune_cmd(data, tmp_path / 't', tmp_path / 'c', 'hvamp'), 'model.z2_dim'),
      ([sys.executable, '-m', 'vaecf.tools.ensemble', '--config=configs/multvae.py:csv',
        f'--config.data.path={data}', f'--tune={tmp / "tune"}', '--members=ease',
        '--steps=0'], 'two or more distinct'),
  ]
  for cmd, want in cases:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and 'error: ' in proc.stderr and want in proc.stderr, (
        cmd, proc.stderr[-2000:])
    assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 't').exists()
