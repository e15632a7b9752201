"""load_split's cache, the CSV export command and the training batches."""
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import scipy.sparse as sp

from vaecf import data, distributed, input_pipeline, sparse
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


# Training batches: sparse.shard_rows(_of) and input_pipeline.epoch_batches against the
# algorithm they replaced, restated plainly (scipy row indexing, then a loop over shards).


def _reference_shard_rows(x, n_shards=1, n_users=None, nnz=None):
  x = sp.csr_matrix(x)
  b = x.shape[0]
  per = n_users if n_users is not None else -(-b // n_shards)
  starts = [min(s * per, b) for s in range(n_shards + 1)]
  shard_nnz = [int(x.indptr[starts[s + 1]] - x.indptr[starts[s]]) for s in range(n_shards)]
  n = nnz if nnz is not None else sparse.bucket_length(max(shard_nnz), 64)
  rows = np.full((n_shards, n), per, np.int32)
  cols = np.zeros((n_shards, n), np.int32)
  vals = np.zeros((n_shards, n), np.float32)
  mask = np.zeros((n_shards, per), np.float32)
  lengths = np.diff(x.indptr)
  for s in range(n_shards):
    lo, hi = starts[s], starts[s + 1]
    a, z = x.indptr[lo], x.indptr[hi]
    rows[s, :z - a] = np.repeat(np.arange(hi - lo), lengths[lo:hi])
    cols[s, :z - a] = x.indices[a:z]
    vals[s, :z - a] = x.data[a:z]
    mask[s, :hi - lo] = 1.0
  return (rows.reshape(-1), cols.reshape(-1), vals.reshape(-1), mask.reshape(-1),
          np.arange(n_shards * per, dtype=np.int32))


_FIELDS = ('rows', 'cols', 'vals', 'user_mask', 'user_pos')


def _assert_same_batch(got, want):
  for name, b in zip(_FIELDS, want):
    a = np.asarray(getattr(got, name))
    assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, a.shape, b.dtype, b.shape)
    np.testing.assert_array_equal(a, b, err_msg=name)


def _clicks(n_users, n_items, seed, index_dtype=np.int32, value_dtype=np.float32):
  """Random CSR with empty rows, long rows, unsorted columns and values other than 1."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(0, 12, n_users) * (rng.random(n_users) > 0.25)
  lengths[rng.integers(n_users)] = n_items  # one full row
  indices = np.concatenate([rng.permutation(n_items)[:k] for k in lengths])
  indptr = np.concatenate([[0], np.cumsum(lengths)])
  x = sp.csr_matrix((rng.integers(1, 5, len(indices)).astype(value_dtype), indices, indptr),
                    shape=(n_users, n_items))
  x.indices, x.indptr = x.indices.astype(index_dtype), x.indptr.astype(index_dtype)
  return x  # (scipy's constructor would have narrowed int64 indices)


@pytest.mark.parametrize('dtypes', [(np.int32, np.float32), (np.int64, np.float32),
                                    (np.int32, np.float64), (np.int64, np.float64),
                                    'no scipy kernel'])
def test_shard_rows_match_the_reference(dtypes, monkeypatch):
  if dtypes == 'no scipy kernel':  # the numpy gather that stands in for scipy's kernel
    monkeypatch.setattr(sparse, '_csr_row_index', None)
    dtypes = (np.int32, np.float32)
  x = _clicks(57, 40, seed=1, index_dtype=dtypes[0], value_dtype=dtypes[1])
  rng = np.random.default_rng(2)
  for n_shards in (1, 2, 3, 4):
    for users in (rng.permutation(57), rng.permutation(57)[:23], np.arange(0),
                  np.array([5, 5, -1, 0])):
      sub = x[users]
      fits = -(-len(users) // n_shards)
      for n_users in (None, fits, fits + 3):
        for nnz in (None, 700):
          want = _reference_shard_rows(sub, n_shards, n_users, nnz)
          _assert_same_batch(sparse.shard_rows(sub, n_shards, n_users, nnz), want)
          _assert_same_batch(sparse.shard_rows_of(x, users, n_shards, n_users, nnz), want)
  empty = x[:0]  # no users at all: one bucket of padding
  _assert_same_batch(sparse.shard_rows_of(empty, np.arange(0), 2), _reference_shard_rows(empty, 2))
  with pytest.raises(ValueError, match='do not fit'):
    sparse.shard_rows_of(x, np.arange(9), 2, 4)
  with pytest.raises(ValueError, match='more than 64'):
    sparse.shard_rows_of(x, np.arange(57), 1, None, 64)
  with pytest.raises(IndexError):
    sparse.shard_rows_of(x, np.array([57]))


@pytest.mark.parametrize('n_devices', [1, 4])
def test_epoch_batches_match_the_reference(n_devices):
  x = _clicks(203, 30, seed=3)
  mesh = distributed.make_mesh(jax.devices()[:n_devices])
  for batch_size, pass_index in ((64, 0), (50, 2), (203, 0), (500, 1)):
    order = input_pipeline.epoch_order(x.shape[0], 7, 3, pass_index)
    per = -(-batch_size // n_devices)
    got = list(input_pipeline.epoch_batches(x, batch_size, 7, 3, mesh, pass_index))
    assert len(got) == -(-x.shape[0] // batch_size)  # the last batch partial, padded
    for i, batch in enumerate(got):
      want = _reference_shard_rows(x[order[i * batch_size:(i + 1) * batch_size]], n_devices, per)
      _assert_same_batch(batch, want)
      assert all(getattr(batch, f).sharding.is_equivalent_to(distributed.batch_sharding(mesh), 1)
                 for f in _FIELDS)
  order = np.random.default_rng(4).permutation(x.shape[0])[:150]  # another order, nnz fixed
  for i, batch in enumerate(input_pipeline.order_batches(x, order, 64, mesh, nnz=512)):
    want = _reference_shard_rows(x[order[i * 64:(i + 1) * 64]], n_devices, 64 // n_devices, 512)
    _assert_same_batch(batch, want)
