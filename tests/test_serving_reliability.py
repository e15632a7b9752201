"""The recommend and split-export commands on awkward input: quoted ids, foreign encodings,
short rows, sweep folders, and orbax's log lines."""
import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from vaecf import distributed, serving, steps, sweep, train
from vaecf.common import VaecfError
from vaecf.data import load_split, readers
from vaecf.serving.cli import read_histories
from vaecf.workdir import load_config
from test_recommend import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _run(*args, timeout=300):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout)


def _refused(proc, *fragments) -> str:
  """The `error:` line of a refused command, which must name every fragment."""
  assert proc.returncode != 0, proc.stdout[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert lines, proc.stderr[-3000:]
  assert 'unexpected' not in lines[0], lines[0]  # a user-facing error, not a fault of vaecf's
  for f in fragments:
    assert f in lines[0], (f, lines[0])
  return lines[0]


def _files(root: Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
          if p.is_file()}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(config, workdir, split) of a tiny Mult-VAE, trained once for the module."""
  root = tmp_path_factory.mktemp('rel')
  c = tiny_config(root / 'cache')
  split = load_split(c.data)[0]
  train.train_and_evaluate(c, root / 'wd', split=split)
  return c, root / 'wd', split


# -- 1. the split export writes CSV that reads back ------------------------------------------

def _awkward_ratings(path: Path) -> set[tuple[str, str]]:
  """user,item rows, every field quoted; ids with commas, quotes and both."""
  rng = np.random.default_rng(0)
  items = [f'item, {k}' if k % 3 == 0 else f'say "hi", {k}' if k % 3 == 1 else f'plain{k}'
           for k in range(20)]
  pairs = set()
  for u in range(40):
    user = f'u,{u}' if u % 2 else f'"q" {u}'
    for k in rng.choice(len(items), size=8, replace=False):
      pairs.add((user, items[k]))
  with open(path, 'w', newline='') as f:
    w = csv.writer(f, quoting=csv.QUOTE_ALL)
    w.writerow(['user', 'item'])
    w.writerows(sorted(pairs))
  return pairs


def test_split_export_quotes_ids_and_reads_back_as_the_same_pairs(tmp_path):
  ratings = tmp_path / 'ratings.csv'
  pairs = _awkward_ratings(ratings)
  out = tmp_path / 'export'
  proc = _run('-m', 'vaecf.data', '--config=configs/multvae.py:csv',
              f'--config.data.path={ratings}', f'--config.data.cache_dir={tmp_path / "cache"}',
              f'--export_dir={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  from vaecf.data.__main__ import PARTS, part_pairs
  from vaecf.presets import compose
  c = compose('multvae', 'csv')
  c.data.path, c.data.cache_dir = str(ratings), str(tmp_path / 'cache')
  split, _ = load_split(c.data)
  back = set()
  for name, (part, users_attr) in PARTS.items():
    with open(out / name, newline='') as f:
      assert all(len(row) == 2 for row in csv.reader(f)), name
    inter = readers.read_delimited(out / name, user_col='user', item_col='item')
    got = list(zip(inter.users.tolist(), inter.items.tolist()))
    want = list(zip(*(a.tolist() for a in part_pairs(split, part, users_attr))))
    assert got == want, name
    back |= set(got)
  assert back == pairs  # every input row, ids unchanged (each user kept: 8 items >= 5)


# -- 2, 3. the recommend command's --input ---------------------------------------------------

def test_a_latin1_input_names_the_file_and_line(trained, tmp_path):
  f = tmp_path / 'h.csv'
  f.write_bytes('user,item\nalice,1\nJos\xe9,2\n'.encode('latin-1'))
  with pytest.raises(VaecfError, match=r'h\.csv, line 3: .*UTF-8'):
    read_histories(f)
  out = tmp_path / 'recs.csv'
  out.write_text('kept\n')
  proc = _run('-m', 'vaecf.serving', f'--workdir={trained[1]}', f'--input={f}',
              f'--output={out}')
  _refused(proc, f'{f}, line 3', 'UTF-8')
  assert out.read_text() == 'kept\n'


def test_an_input_row_with_one_field_names_the_file_and_line(trained, tmp_path):
  f = tmp_path / 'h.csv'
  f.write_text('user,item\nalice,1\nbob\n')
  with pytest.raises(VaecfError, match=r'h\.csv, line 3: '):
    read_histories(f)
  out = tmp_path / 'recs.csv'
  out.write_text('kept\n')
  proc = _run('-m', 'vaecf.serving', f'--workdir={trained[1]}', f'--input={f}',
              f'--output={out}')
  line = _refused(proc, f'{f}, line 3')
  assert line.startswith(f'error: {f}, line 3: ')
  assert out.read_text() == 'kept\n'


# -- 4. sweep folders and tune rounds ---------------------------------------------------------

@pytest.fixture(scope='module')
def tune_round(trained, tmp_path_factory):
  """A tune round's folder, DIR/<model>/round-<digest>/: a sweep given its points (the
  config names none), test users unscored."""
  c, _, split = trained
  root = tmp_path_factory.mktemp('tune')
  wd = root / 'multvae' / 'round-0123456789'
  points = [{'anneal_cap': 0.0}, {'anneal_cap': 0.2}, {'anneal_cap': 1.0}]
  res = sweep.train_sweep(c, wd, split=split, points=points, score_test=False)
  return wd, res


def _member_scores(wd: Path, k: int, x):
  """Model k's scores from the tuner's own path (restore_best_params), not vaecf.serving's."""
  from vaecf import models
  c = load_config(wd)
  mesh = distributed.make_mesh()
  n_items = len(np.load(wd / 'item_ids.npy'))
  params = jax.tree.map(lambda a: a[k], sweep.restore_best_params(wd, c, n_items, mesh))
  for_params, _ = steps.make_scorer(models.build(c, n_items), mesh, 2000)
  return np.asarray(for_params(params)(x))


def test_a_tune_rounds_model_is_served_at_its_best_epoch(trained, tune_round):
  wd, res = tune_round
  split = trained[2]
  x = split.val_tr[:8]
  for k in (0, 2):
    rec = serving.from_workdir(wd, model_index=k)
    assert rec.info['model_index'] == k
    assert rec.info['step'] == res['models'][k]['best_epoch']
    np.testing.assert_allclose(rec.scores(x), _member_scores(wd, k, x), rtol=1e-5, atol=1e-5)


def test_a_plain_sweep_folder_is_served_through_the_command(trained, tmp_path):
  c, _, split = trained
  s = c.copy_and_resolve_references()
  s.sweep.mode, s.sweep.caps, s.train.epochs = 'cap', (0.1, 0.5), 1
  wd = tmp_path / 'sweep'
  sweep.train_sweep(s, wd, split=split)
  out = tmp_path / 'recs.csv'
  proc = _run('-m', 'vaecf.serving', f'--workdir={wd}', '--model_index=1', '--items=1,2',
              '--n=4', f'--output={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  want = serving.from_workdir(wd, model_index=1).recommend(['1', '2'], n=4).items
  with open(out, newline='') as f:
    assert [int(r['item']) for r in csv.DictReader(f)] == want


@pytest.mark.parametrize('flag,fragments', [
    ([], ['3 models', '--model_index']),
    (['--model_index=3'], ['--model_index=3', '3 models']),
    (['--model_index=-1'], ['--model_index=-1', '3 models']),
    (['--model_index=0', '--step=1'], ['--step']),
])
def test_a_sweep_without_a_valid_model_index_is_refused(tune_round, tmp_path, flag, fragments):
  wd = tune_round[0]
  before = _files(wd)
  proc = _run('-m', 'vaecf.serving', f'--workdir={wd}', '--items=1,2', *flag)
  _refused(proc, str(wd), *fragments)
  assert _files(wd) == before


def test_model_index_on_a_single_run_is_refused(trained):
  with pytest.raises(VaecfError, match='not a sweep'):
    serving.from_workdir(trained[1], model_index=0)


def test_a_grouped_sweep_folder_is_refused_naming_its_groups(tune_round, tmp_path):
  # The layout vaecf.sweep_groups writes: DIR/groups.json and one sweep per shape.
  wd = tmp_path / 'groups'
  groups = []
  for name in ('latent_dim=4', 'latent_dim=8'):
    (wd / name).mkdir(parents=True)
    groups.append({'shape': {'latent_dim': int(name[-1])}, 'workdir': str(wd / name),
                   'points': [{'anneal_cap': 0.2}], 'test_eval_seconds': 0.0})
  (wd / 'groups.json').write_text(json.dumps({'groups': groups, 'models': []}))
  before = _files(wd)
  proc = _run('-m', 'vaecf.serving', f'--workdir={wd}', '--items=1,2')
  _refused(proc, str(wd), 'latent_dim=4', 'latent_dim=8', '--model_index')
  assert _files(wd) == before


# -- 5. orbax's log lines ---------------------------------------------------------------------

def test_recommending_from_a_sound_workdir_prints_no_orbax_metadata_warning(trained, tmp_path):
  proc = _run('-m', 'vaecf.serving', f'--workdir={trained[1]}', '--items=1,2', '--n=3')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Metadata file does not exist' not in proc.stderr, proc.stderr
  assert '_CHECKPOINT_METADATA' not in proc.stderr, proc.stderr


def test_only_orbaxs_missing_metadata_line_is_silenced(caplog):
  from absl import logging as absl_logging
  from vaecf import checkpoints
  with caplog.at_level(logging.WARNING, logger='absl'), checkpoints.quiet_missing_metadata():
    absl_logging.warning('Metadata file does not exist: %s', '/x/_CHECKPOINT_METADATA')
    absl_logging.warning('something else went wrong')
  assert 'something else went wrong' in caplog.text
  # Only orbax's own line is dropped: the same text from anyone else still shows.
  assert 'Metadata file does not exist' in caplog.text
