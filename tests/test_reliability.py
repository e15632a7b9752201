"""Bad input and interrupted runs: clear errors, nothing lost, no code run uninvited.

Each test here failed on the code before the reliability pass (issue 13): a resume on
other data, a workdir's module imported on open, a metrics log out of step with its
checkpoints, config values checked only deep in a jitted step, workdir files and
export folders trusted blindly, and two runs writing one workdir.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from vaecf import config as config_lib, console, serving, train
from vaecf.config import base_config
from vaecf.data import load_split
from vaecf.data.types import Split
from vaecf.workdir import Workdir, WorkdirError, read_metrics

REPO = Path(__file__).resolve().parents[1]


def tiny_config(cache: Path, epochs: int = 2):
  c = base_config()
  c.data.rating_threshold = 3.5
  c.data.cache_dir = str(cache)
  c.model.hidden_dims = (16,)
  c.model.latent_dim = 4
  c.train.batch_size = 256
  c.train.epochs = epochs
  c.train.total_anneal_steps = 20
  return c


@pytest.fixture(scope='module')
def split(tmp_path_factory):
  return load_split(tiny_config(tmp_path_factory.mktemp('data')).data)[0]


def _epochs(wd: Path) -> list[int]:
  return [r['epoch'] for r in read_metrics(wd)]


def _files(wd: Path) -> dict[str, bytes]:
  return {n: (wd / n).read_bytes() for n in ('item_ids.npy', 'data.json', 'config.json')}


def _shuffled_items(split: Split, seed: int = 0) -> Split:
  """The same shapes and counts with the item columns relabelled: other data."""
  perm = np.random.default_rng(seed).permutation(split.n_items)
  cols = lambda m: sp.csr_matrix(m[:, perm])
  return Split(cols(split.train), cols(split.val_tr), cols(split.val_te), cols(split.test_tr),
               cols(split.test_te), split.item_ids[perm], split.train_user_ids,
               split.val_user_ids, split.test_user_ids)


# -- 1. resuming on other data ---------------------------------------------------------------

def test_resume_on_another_split_is_refused_before_anything_changes(tmp_path, split):
  c = tiny_config(tmp_path / 'cache', epochs=3)
  train.train_and_evaluate(c, tmp_path / 'wd', split=split, stop_after_epoch=1)
  before = _files(tmp_path / 'wd')
  with pytest.raises(WorkdirError, match='another split'):
    train.train_and_evaluate(c, tmp_path / 'wd', split=_shuffled_items(split))
  assert _files(tmp_path / 'wd') == before
  # The same data still resumes.
  res = train.train_and_evaluate(c, tmp_path / 'wd', split=split)
  assert res['best_epoch'] >= 1 and _epochs(tmp_path / 'wd') == [1, 2, 3]


# -- 3. a workdir's code runs only when asked ------------------------------------------------

def test_opening_a_workdir_does_not_import_its_model_module(tmp_path, split):
  c = tiny_config(tmp_path / 'cache', epochs=1)
  c.model.module = 'experiments.swish_vae'
  c.model.name = 'swish_vae'
  c.model.layer_norm_eps = 1e-5  # the model's own key (configs/swish_vae.py declares it)
  train.train_and_evaluate(c, tmp_path / 'wd', split=split)
  code = ('import sys; from vaecf import serving\n'
          'try:\n'
          f'  serving.from_workdir({str(tmp_path / "wd")!r})\n'
          '  raise SystemExit("opened without trust_code")\n'
          'except PermissionError as e:\n'
          '  assert "trust_code" in str(e) and "experiments.swish_vae" in str(e), e\n'
          'assert "experiments.swish_vae" not in sys.modules\n'
          f'rec = serving.from_workdir({str(tmp_path / "wd")!r}, trust_code=True)\n'
          'assert "experiments.swish_vae" in sys.modules and len(rec.recommend([1], n=3).items) == 3\n')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


# -- 4. metrics.jsonl follows the checkpoints ------------------------------------------------

def test_rows_of_a_run_killed_before_its_first_checkpoint_are_dropped(tmp_path, split):
  wd = tmp_path / 'wd'
  wd.mkdir()
  (wd / 'metrics.jsonl').write_text('{"epoch": 1}\n{"epoch": 2}\n')
  train.train_and_evaluate(tiny_config(tmp_path / 'cache'), wd, split=split)
  assert _epochs(wd) == [1, 2]


def test_a_step_folder_moved_aside_leaves_no_duplicate_epochs(tmp_path, split):
  c = tiny_config(tmp_path / 'cache', epochs=4)
  c.train.keep_latest = 3
  wd = tmp_path / 'wd'
  train.train_and_evaluate(c, wd, split=split, stop_after_epoch=3)
  (wd / 'checkpoints' / '3').rename(tmp_path / 'aside')
  train.train_and_evaluate(c, wd, split=split)
  assert _epochs(wd) == [1, 2, 3, 4]


def test_a_half_written_last_line_does_not_block_resume(tmp_path, split):
  c = tiny_config(tmp_path / 'cache', epochs=3)
  wd = tmp_path / 'wd'
  train.train_and_evaluate(c, wd, split=split, stop_after_epoch=2)
  with open(wd / 'metrics.jsonl', 'a') as f:
    f.write('{"epoch": 3, "train_lo')
  train.train_and_evaluate(c, wd, split=split)
  assert _epochs(wd) == [1, 2, 3]


@pytest.mark.slow
def test_kill_9_then_rerun_keeps_the_log_in_step(tmp_path):
  """A real kill of the command mid-run (subprocess), then the same command again."""
  wd = tmp_path / 'wd'
  cmd = [sys.executable, '-m', 'vaecf.main', '--config=configs/default.py', f'--workdir={wd}',
         f'--config.data.cache_dir={tmp_path / "cache"}', '--config.train.epochs=6']
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and not ((wd / 'metrics.jsonl').exists() and
                                        len(_epochs(wd)) >= 2):
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  with open(wd / 'metrics.jsonl', 'a') as f:
    f.write('{"epoch": 99, "half')  # as if the kill cut a line short
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert _epochs(wd) == [1, 2, 3, 4, 5, 6]


# -- 6. config values ------------------------------------------------------------------------

@pytest.mark.parametrize('key,value,fragment', [
    ('train.batch_size', 0, 'train.batch_size=0'),
    ('train.batch_size', -5, 'train.batch_size=-5'),
    ('train.eval_every', 0, 'train.eval_every=0'),
    ('data.test_prop', 0.0, 'data.test_prop=0.0'),
    ('model.dropout_rate', 1.0, 'model.dropout_rate=1.0'),
    ('train.learning_rate', float('nan'), 'train.learning_rate=nan'),
    ('model.likelihood', 'poisson', "model.likelihood='poisson'"),
])
def test_bad_config_values_are_named_before_anything_is_written(tmp_path, split, key, value,
                                                               fragment):
  c = tiny_config(tmp_path / 'cache')
  section, name = key.split('.')
  c[section][name] = value
  with pytest.raises(config_lib.ConfigError) as e:
    train.train_and_evaluate(c, tmp_path / 'wd', split=split)
  assert fragment in str(e.value)
  assert not (tmp_path / 'wd').exists()


def test_base_and_shipped_configs_are_valid():
  import importlib.util
  config_lib.validate(base_config())
  for path in sorted((REPO / 'configs').glob('*.py')):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config_lib.validate(mod.get_config())


def test_a_run_that_diverged_before_any_checkpoint_does_not_lock_its_config(tmp_path, split):
  c = tiny_config(tmp_path / 'cache')
  c.train.learning_rate = 1e6
  with pytest.raises(train.TrainingDiverged):
    train.train_and_evaluate(c, tmp_path / 'wd', split=split)
  c.train.learning_rate = 1e-3
  res = train.train_and_evaluate(c, tmp_path / 'wd', split=split)
  assert res['best_epoch'] >= 1
  saved = json.loads((tmp_path / 'wd' / 'config.json').read_text())
  assert saved['train']['learning_rate'] == 1e-3


# -- 7. workdirs that cannot be written ------------------------------------------------------

def test_a_workdir_that_is_a_file_is_a_clear_error(tmp_path, split):
  (tmp_path / 'wd').write_text('not a folder')
  with pytest.raises(WorkdirError, match='is a file'):
    train.train_and_evaluate(tiny_config(tmp_path / 'cache'), tmp_path / 'wd', split=split)


def test_an_unwritable_workdir_is_a_clear_error(tmp_path, split):
  # /proc refuses new folders even to root, unlike a chmod'ed folder.
  with pytest.raises(WorkdirError, match='cannot write to --workdir /proc/vaecf'):
    train.train_and_evaluate(tiny_config(tmp_path / 'cache'), '/proc/vaecf-test', split=split)


def test_an_unwritable_cache_folder_only_warns(tmp_path, caplog):
  c = tiny_config(Path('/proc/vaecf-cache'))
  with caplog.at_level('WARNING'):
    split, _ = load_split(c.data)
  assert split.train.shape[0] > 0
  assert any('could not write the split cache' in r.getMessage() for r in caplog.records)


def test_commands_print_one_line_for_user_errors(capsys):
  def full_disk():
    raise OSError(28, 'No space left on device', '/x/metrics.jsonl')
  with pytest.raises(SystemExit) as e:
    console.guard(full_disk)
  assert e.value.code == 1
  assert capsys.readouterr().err == 'error: No space left on device: /x/metrics.jsonl\n'


def test_main_reports_a_bad_value_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'vaecf.main', '--config=configs/default.py',
       f'--workdir={tmp_path / "wd"}', '--config.train.batch_size=0'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert 'Traceback' not in proc.stderr
  assert 'train.batch_size=0: an integer >= 1' in proc.stderr
  assert not (tmp_path / 'wd').exists()


# -- 9. one run per workdir ------------------------------------------------------------------

def test_a_second_run_in_the_same_workdir_is_refused(tmp_path, split):
  c = tiny_config(tmp_path / 'cache')
  first = Workdir(tmp_path / 'wd')
  first.start(c, split, {'name': 'x'})
  try:
    with pytest.raises(WorkdirError, match=f'in use by another run \\(pid {os.getpid()}'):
      train.train_and_evaluate(c, tmp_path / 'wd', split=split)
  finally:
    first.close()
  assert train.train_and_evaluate(c, tmp_path / 'wd', split=split)['best_epoch'] >= 1


def test_the_lock_is_held_across_processes(tmp_path, split):
  c = tiny_config(tmp_path / 'cache')
  wd = Workdir(tmp_path / 'wd')
  wd.start(c, split, {'name': 'x'})
  try:
    code = ('from vaecf.workdir import Workdir\n'
            f'w = Workdir({str(tmp_path / "wd")!r})\n'
            'try:\n  w.acquire()\nexcept Exception as e:\n  print(type(e).__name__, e)\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                         text=True, timeout=120).stdout
    assert out.startswith('WorkdirError') and 'in use by another run' in out, out
  finally:
    wd.close()


# -- 8. export folders -----------------------------------------------------------------------

@pytest.fixture(scope='module')
def exported(tmp_path_factory, split):
  pytest.importorskip('flatbuffers', reason='jax.export serialisation needs flatbuffers')
  root = tmp_path_factory.mktemp('export')
  train.train_and_evaluate(tiny_config(root / 'cache', epochs=1), root / 'wd', split=split)
  return serving.export(serving.from_workdir(root / 'wd'), root / 'export')


def _damaged(exported: Path, tmp_path: Path, damage) -> Path:
  import shutil
  out = tmp_path / 'damaged'
  shutil.copytree(exported, out)
  damage(out)
  return out


def _nan_params(d: Path):
  with np.load(d / 'params.npz') as z:
    arrays = {k: z[k] for k in z.files}
  arrays = {k: np.full_like(v, np.nan) for k, v in arrays.items()}
  np.savez(d / 'params.npz', **arrays)


@pytest.mark.parametrize('damage,fragment', [
    (_nan_params, 'non-finite'),
    (lambda d: np.save(d / 'item_ids.npy', np.load(d / 'item_ids.npy')[:-3]), 'item_ids.npy has'),
    (lambda d: np.save(d / 'fallback.npy', np.zeros(7, np.float32)), 'fallback.npy has 7 items'),
    (lambda d: np.save(d / 'fallback.npy', np.full(len(np.load(d / 'item_ids.npy')), np.nan,
                                                   np.float32)), 'fallback.npy holds non-finite'),
    (lambda d: (d / 'score.bin').write_bytes((d / 'score.bin').read_bytes()[:100]),
     'cannot read score.bin'),
    (lambda d: (d / 'params.npz').unlink(), 'params.npz is missing'),
])
def test_damaged_exports_fail_at_load_naming_the_file(exported, tmp_path, damage, fragment):
  folder = _damaged(exported, tmp_path, damage)
  from vaecf.serving.export import ExportError
  with pytest.raises(ExportError, match=fragment):
    serving.load_exported(folder)


def test_an_intact_export_still_loads(exported):
  assert len(serving.load_exported(exported).recommend([1, 2], n=4).items) == 4


# -- 5. the recommend command's input --------------------------------------------------------

def test_histories_csv_with_a_bom_and_quotes_reads_clean_ids(tmp_path):
  from vaecf.serving.cli import read_histories
  f = tmp_path / 'h.csv'
  f.write_bytes('\ufeffuser,item\n"alice","1"\nalice,2\nbob,3\n'.encode('utf-8'))
  assert read_histories(f) == {'alice': ['1', '2'], 'bob': ['3']}


def test_histories_csv_with_an_empty_user_id_names_the_line(tmp_path):
  from vaecf.serving.cli import read_histories
  f = tmp_path / 'h.csv'
  f.write_text('user,item\nalice,1\n,2\n')
  with pytest.raises(ValueError, match='line 3: empty user id'):
    read_histories(f)
