"""load_split's cache and the CSV export command."""
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vaecf import data
from vaecf.config import base_config
from vaecf.data import readers

REPO = Path(__file__).resolve().parents[1]


def _write_ratings(path, n_users=40, n_items=30, seed=0):
  rng = np.random.default_rng(seed)
  lines = ['userId,movieId,rating,timestamp']
  for u in range(1, n_users + 1):
    for i in rng.choice(n_items, size=rng.integers(6, 15), replace=False):
      lines.append(f'{u},{i + 100},{rng.choice([3.0, 4.0, 5.0])},0')
  path.write_text('\n'.join(lines) + '\n')


def _same(a, b) -> bool:
  return a.shape == b.shape and (a != b).nnz == 0


def _config(tmp_path, ratings):
  c = base_config()
  c.data.name = 'toy'
  c.data.path = str(ratings)
  c.data.rating_threshold = 3.5
  c.data.n_heldout_users = 5
  c.data.cache_dir = str(tmp_path / 'cache')
  return c


def test_cache_hit_invalidation_and_damage(tmp_path, monkeypatch):
  ratings = tmp_path / 'ratings.csv'
  _write_ratings(ratings)
  c = _config(tmp_path, ratings)
  first, info = data.load_split(c.data)
  assert info['summary']['val_tr']['users'] == 5
  calls = []
  real = readers.read_interactions
  monkeypatch.setattr(readers, 'read_interactions', lambda *a, **k: calls.append(1) or real(*a, **k))
  second, _ = data.load_split(c.data)
  assert calls == [] and _same(second.train, first.train)  # served from the cache
  c.data.n_heldout_users = 6  # a setting changes: rebuilt
  assert data.load_split(c.data)[0].val_tr.shape[0] == 6 and len(calls) == 1
  c.data.n_heldout_users = 5
  _write_ratings(ratings, seed=1)  # the input changes: rebuilt
  os.utime(ratings, (time.time() + 5, time.time() + 5))
  third, _ = data.load_split(c.data)
  assert len(calls) == 2 and not _same(third.train, first.train)
  for f in (tmp_path / 'cache' / 'splits').glob('*.npz'):
    f.write_bytes(b'not an npz')  # a damaged cache is rebuilt, never trusted
  fourth, _ = data.load_split(c.data)
  assert len(calls) == 3 and _same(fourth.train, third.train)


def test_missing_path_is_a_clear_error(tmp_path):
  c = _config(tmp_path, tmp_path / 'nowhere' / 'ratings.csv')
  with pytest.raises(data.DataError, match='does not exist'):
    data.load_split(c.data)


def test_export_writes_five_sorted_files_with_original_ids(tmp_path):
  ratings = tmp_path / 'ratings.csv'
  _write_ratings(ratings)
  out = tmp_path / 'export'
  proc = subprocess.run(
      [sys.executable, '-m', 'vaecf.data', '--config=configs/default.py',
       f'--config.data.path={ratings}', '--config.data.n_heldout_users=5',
       f'--config.data.cache_dir={tmp_path / "cache"}', f'--export_dir={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'train' in proc.stdout and 'interactions' in proc.stdout
  c = _config(tmp_path, ratings)
  c.data.name = 'ml-latest-small'
  split, _ = data.load_split(c.data)
  parts = {'train.csv': (split.train, split.train_user_ids),
           'validation_tr.csv': (split.val_tr, split.val_user_ids),
           'validation_te.csv': (split.val_te, split.val_user_ids),
           'test_tr.csv': (split.test_tr, split.test_user_ids),
           'test_te.csv': (split.test_te, split.test_user_ids)}
  kept = {(int(r['userId']), int(r['movieId'])) for r in csv.DictReader(open(ratings))
          if float(r['rating']) > 3.5}
  for name, (m, users) in parts.items():
    rows = list(csv.reader(open(out / name)))
    assert rows[0] == ['user', 'item']
    pairs = [(int(u), int(i)) for u, i in rows[1:]]
    assert pairs == sorted(pairs) and len(pairs) == m.nnz
    coo = m.tocoo()
    assert set(pairs) == set(zip(users[coo.row].tolist(), split.item_ids[coo.col].tolist()))
    assert set(pairs) <= kept
