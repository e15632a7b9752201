"""Data reliability: empty held-out groups, exact ids from delimited files, ids as
integer codes (for the MSD's and Netflix's size), the held-out fraction and the
synthetic-data scale tool."""
from __future__ import annotations

import csv
import subprocess
import tracemalloc
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from vaecf import data
from vaecf.config import base_config
from vaecf.data import readers, textio
from vaecf.data import __main__ as main_module
from vaecf.data.__main__ import export, part_pairs
from vaecf.data.split import _csr, preprocess, strong_generalization_split
from vaecf.data.types import DataError, Interactions, Split

REPO = Path(__file__).resolve().parents[1]
SEED = 98765


def write(path: Path, text: str | bytes) -> Path:
  path.write_bytes(text if isinstance(text, bytes) else text.encode())
  return path


def heldout_users(n_users: int, h: int, seed: int = SEED):
  """(validation, test) positions among the sorted users, as the split draws them."""
  perm = np.random.RandomState(seed).permutation(n_users)
  return perm[n_users - 2 * h:n_users - h], perm[n_users - h:]


# ------------------------------------------------- 1. held-out groups without targets

def _inter(users, items) -> Interactions:
  return Interactions.from_ids(np.asarray(users), np.asarray(items),
                               np.ones(len(users), np.float32), 'mem')


def test_heldout_users_all_too_short_is_an_error():
  # 30 users of 3 items each: nobody reaches the 5 items needed to draw a target.
  users = np.repeat(np.arange(30), 3)
  items = np.tile(np.arange(3), 30)
  with pytest.raises(DataError) as e:
    strong_generalization_split(_inter(users, items), 5)
  msg = str(e.value)
  assert 'validation group has no targets' in msg and 'NaN' in msg
  assert 'of its 5 users' in msg and 'fewer than 5' in msg
  assert 'min_user_count >= 5' in msg and 'n_heldout_users' in msg


def test_only_test_group_without_targets_names_it():
  # Validation users get 6 items, test users 3: only the test group is empty.
  n, h = 40, 6
  vd, te = heldout_users(n, h)
  rows = [(u, i) for u in range(n) for i in range(3 if u in set(te.tolist()) else 6)]
  users, items = map(np.asarray, zip(*rows))
  with pytest.raises(DataError, match=r'the test group has no targets.*of its 6 users 6 have'):
    strong_generalization_split(_inter(users, items), h)


def test_heldout_group_that_vanishes_is_an_error():
  # Validation users only have items no training user has: the group vanishes.
  n, h = 40, 5
  vd, _ = heldout_users(n, h)
  vd = set(vd.tolist())
  rows = [(u, (1000 + u * 10 + i) if u in vd else i) for u in range(n) for i in range(8)]
  users, items = map(np.asarray, zip(*rows))
  with pytest.raises(DataError, match=r'validation group has no targets.*of its 5 users none '
                     r'of them has an item that the training users have'):
    strong_generalization_split(_inter(users, items), h)


def test_test_prop_too_small_for_any_target_is_an_error():
  users = np.repeat(np.arange(30), 6)
  items = np.tile(np.arange(6), 30)
  with pytest.raises(DataError, match=r'test_prop=0.1 draws int\(test_prop \* n\) = 0 targets'):
    strong_generalization_split(_inter(users, items), 5, test_prop=0.1)


def test_some_users_without_targets_are_fine():
  # Held-out users with < 5 items stay (fold-in only), as in the authors' code.
  users = np.concatenate([np.repeat(np.arange(20), 6), np.repeat(np.arange(20, 40), 3)])
  items = np.concatenate([np.tile(np.arange(6), 20), np.tile(np.arange(3), 20)])
  split = strong_generalization_split(_inter(users, items), 8)
  assert split.val_te.nnz > 0 and split.test_te.nnz > 0


def test_load_split_reports_the_empty_group(tmp_path):
  lines = ['userId,movieId,rating,timestamp'] + [
      f'{u},{i},5,0' for u in range(30) for i in range(3)]
  write(tmp_path / 'ratings.csv', '\n'.join(lines) + '\n')
  c = base_config()
  c.data.name, c.data.path, c.data.cache_dir = 'toy', str(tmp_path), str(tmp_path / 'c')
  c.data.min_user_count, c.data.n_heldout_users = 0, 5
  with pytest.raises(DataError, match='validation group has no targets'):
    data.load_split(c.data)


# ------------------------------------------------------------ 2. exact delimited ids

def test_bom_before_a_header(tmp_path):
  f = write(tmp_path / 'x.csv', '\ufeffuser,item,weight\n17,5,2\n18,5,3\n')
  inter = readers.read_delimited(f, user_col='user', item_col='item', value_col='weight')
  assert inter.users.tolist() == [17, 18] and inter.users.dtype == np.int64
  assert inter.values.tolist() == [2, 3]


def test_bom_before_the_first_id(tmp_path):
  f = write(tmp_path / 'x.tsv', '\ufeff17\t1\n17\t2\n')
  inter = readers.read_delimited(f, user_col=0, item_col=1, delimiter='\t', header=False)
  assert inter.users.tolist() == [17, 17] and inter.users.dtype == np.int64
  f = write(tmp_path / 'y.tsv', '\ufeffalice\t1\nalice\t2\n')
  inter = readers.read_delimited(f, user_col=0, item_col=1, delimiter='\t', header=False)
  assert inter.users.tolist() == ['alice', 'alice']


@pytest.mark.parametrize('reader,name,text,first', [
    ('read_movielens_csv', 'ratings.csv', 'userId,movieId,rating,timestamp\n1,2,3.0,4\n', 1),
    ('read_movielens_dat', 'ratings.dat', '1::2::3::4\n', 1),
    ('read_movielens_100k', 'u.data', '1\t2\t3\t4\n', 1),
    ('read_netflix', 'combined_data_1.txt', '7:\n1,3,2005-01-01\n', 1),
    ('read_msd_triplets', 'train_triplets.txt', 'ab\tSO1\t3\n', 'ab'),
])
def test_bom_in_every_format(tmp_path, reader, name, text, first):
  inter = getattr(readers, reader)(write(tmp_path / name, b'\xef\xbb\xbf' + text.encode()))
  assert inter.users.tolist() == [first]


def test_quoted_fields(tmp_path):
  f = write(tmp_path / 'x.csv', 'user,item,value\n"17","5","2.5"\n17,"a,b",1\n18,"say ""hi""",1\n')
  inter = readers.read_delimited(f, user_col='user', item_col='item', value_col='value')
  assert inter.users.tolist() == [17, 17, 18] and inter.users.dtype == np.int64
  assert inter.items.tolist() == ['5', 'a,b', 'say "hi"']
  assert inter.values.tolist() == [2.5, 1, 1]


def test_quoted_header_names(tmp_path):
  f = write(tmp_path / 'x.csv', '"user id","item, id"\n1,2\n')
  inter = readers.read_delimited(f, user_col='user id', item_col='item, id')
  assert (inter.users.tolist(), inter.items.tolist()) == ([1], [2])


def test_movielens_csv_quoted(tmp_path):
  f = write(tmp_path / 'ratings.csv', '"userId","movieId","rating","timestamp"\n"1","2","3.5","4"\n')
  inter = readers.read_movielens_csv(f)
  assert (inter.users.tolist(), inter.items.tolist(), inter.values.tolist()) == ([1], [2], [3.5])


def test_mixed_id_column_is_read_wholly_as_text(tmp_path, monkeypatch):
  monkeypatch.setattr(textio, '_CHUNK', 8)  # the text id sits in a later block
  f = write(tmp_path / 'x.csv', '17,1\n"17",2\n007,3\n7,4\nabc,5\n 17 ,6\n')
  inter = readers.read_delimited(f, user_col=0, item_col=1, header=False)
  # '17' and '"17"' (and ' 17 ') are one user; '007' and '7' stay two.
  assert inter.users.tolist() == ['17', '17', '007', '7', 'abc', '17']
  assert len(inter.user_ids) == 4 and inter.items.dtype == np.int64


def test_only_plain_integers_become_int64(tmp_path):
  f = write(tmp_path / 'x.csv', '007,1\n8,2\n')
  assert readers.read_delimited(f, user_col=0, item_col=1).users.tolist() == ['007', '8']
  f = write(tmp_path / 'y.csv', '-3,1\n12,2\n9,3\n')
  inter = readers.read_delimited(f, user_col=0, item_col=1)
  assert inter.users.tolist() == [-3, 12, 9] and inter.user_ids.tolist() == [-3, 9, 12]
  assert inter.user_codes.tolist() == [0, 2, 1]


# ----------------------------------------------------------- 3. ids as integer codes

def _msd_text(rng, n_users=300, n_songs=200, n=6000) -> tuple[str, list]:
  users = [f'{x:040x}' for x in rng.integers(0, 2**62, n_users)]
  songs = [f'SO{x:016X}' for x in rng.integers(0, 2**62, n_songs)]
  rows = [(users[rng.integers(n_users)], songs[rng.integers(n_songs)], int(rng.integers(1, 9)))
          for _ in range(n)]
  return ''.join(f'{u}\t{s}\t{c}\n' for u, s, c in rows), rows


def test_long_ids_are_not_cut(tmp_path, monkeypatch):
  monkeypatch.setattr(textio, '_CHUNK', 64)
  long_id = 'u' * 300
  f = write(tmp_path / 'train_triplets.txt', f'a\tSO1\t1\n{long_id}\tSO2\t1\nb\tSO1\t2\n')
  assert readers.read_msd_triplets(f).users.tolist() == ['a', long_id, 'b']


def test_non_ascii_and_invalid_utf8_ids(tmp_path):
  f = write(tmp_path / 'train_triplets.txt', 'zoë\tSO1\t1\nzoe\tSO1\t1\n中\tSO2\t3\n')
  inter = readers.read_msd_triplets(f)
  assert inter.users.tolist() == ['zoë', 'zoe', '中']
  assert inter.user_ids.tolist() == sorted(['zoë', 'zoe', '中'])  # code point order
  (tmp_path / 'bad').mkdir()
  f = write(tmp_path / 'bad' / 'train_triplets.txt', b'ok\tSO1\t1\nok\tSO2\t1\nb\xff\tSO1\t1\n')
  with pytest.raises(DataError, match="line 3: user 'b\ufffd' is not valid UTF-8"):
    readers.read_msd_triplets(f)


def test_interactions_hold_codes_and_sorted_vocabularies(tmp_path, monkeypatch):
  monkeypatch.setattr(textio, '_CHUNK', 4096)  # ~60 blocks: ids meet across blocks
  text, rows = _msd_text(np.random.default_rng(0))
  inter = readers.read_msd_triplets(write(tmp_path / 'train_triplets.txt', text))
  users, songs, counts = map(list, zip(*rows))
  assert inter.user_codes.dtype == np.int32 and inter.item_codes.dtype == np.int32
  assert inter.user_ids.tolist() == sorted(set(users))  # each distinct id once, sorted
  assert inter.item_ids.tolist() == sorted(set(songs))
  assert inter.users.tolist() == users and inter.items.tolist() == songs
  assert inter.values.tolist() == counts
  # Per row: 4 + 4 + 4 bytes, not two 40- and 18-character unicode ids (232 bytes).
  per_row = inter.user_codes.nbytes + inter.item_codes.nbytes + inter.values.nbytes
  assert per_row == 12 * len(rows)


def test_int_ids_across_blocks(tmp_path, monkeypatch):
  monkeypatch.setattr(textio, '_CHUNK', 64)
  rng = np.random.default_rng(1)
  u, i = rng.integers(0, 50, 500), rng.integers(10**9, 10**9 + 40, 500)
  f = write(tmp_path / 'u.data', ''.join(f'{a}\t{b}\t1\t0\n' for a, b in zip(u, i)))
  inter = readers.read_movielens_100k(f)
  assert inter.users.tolist() == u.tolist() and inter.items.tolist() == i.tolist()
  assert inter.user_ids.tolist() == sorted(set(u.tolist()))


def test_netflix_codes_across_files_and_blocks(tmp_path, monkeypatch):
  monkeypatch.setattr(textio, '_CHUNK', 32)
  write(tmp_path / 'combined_data_1.txt', '3:\n30,4,2005-01-01\n10,5,2005-01-01\n'
        '1:\n20,1,2005-01-01\n')
  write(tmp_path / 'combined_data_2.txt', '2:\n10,3,2005-01-01\n40,4,2005-01-01\n')
  inter = readers.read_netflix(tmp_path)
  assert inter.users.tolist() == [30, 10, 20, 10, 40] and inter.items.tolist() == [3, 3, 1, 2, 2]
  assert inter.user_ids.tolist() == [10, 20, 30, 40] and inter.item_ids.tolist() == [1, 2, 3]


def test_vocabulary_matches_np_unique():
  rng = np.random.default_rng(2)
  pool = np.array([f'id{x}'.encode() * int(rng.integers(1, 4)) for x in range(300)])
  blocks = [pool[rng.integers(0, 300, int(rng.integers(0, 200)))] for _ in range(30)]
  voc = textio.Vocabulary()
  col = textio.Column(np.int32, capacity=7)  # grows many times
  for b in blocks:
    col.append(voc.add(b))
  codes, ids = voc.finish(col.array())
  want_ids, want = np.unique(np.concatenate(blocks), return_inverse=True)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_array_equal(codes, want.ravel())


def test_split_of_a_read_file_matches_the_split_of_its_ids(tmp_path, monkeypatch):
  """The codes route (reader) and the plain-ids route give one split."""
  monkeypatch.setattr(textio, '_CHUNK', 8192)
  text, rows = _msd_text(np.random.default_rng(3), n=20000)
  inter = readers.read_msd_triplets(write(tmp_path / 'train_triplets.txt', text))
  users, songs, counts = map(np.asarray, zip(*rows))
  plain = Interactions.from_ids(users, songs, counts, 'mem')
  kw = dict(rating_threshold=None, min_user_count=10, min_item_count=20)
  a = strong_generalization_split(preprocess(inter, **kw)[0], 20)
  b = strong_generalization_split(preprocess(plain, **kw)[0], 20)
  for name in ('item_ids', 'train_user_ids', 'val_user_ids', 'test_user_ids'):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert getattr(a, name).dtype.kind == 'U'
  for name in ('train', 'val_tr', 'val_te', 'test_tr', 'test_te'):
    assert (getattr(a, name) != getattr(b, name)).nnz == 0


def test_csr_is_binary_and_sorted():
  m = _csr(np.array([2, 0, 2, 0, 2]), np.array([1, 3, 1, 0, 0]), 3, 4)
  assert m.dtype == np.float32 and m.data.tolist() == [1, 1, 1, 1]
  assert m.indptr.tolist() == [0, 2, 2, 4] and m.indices.tolist() == [0, 3, 0, 1]
  assert m.has_sorted_indices


def test_export_string_ids_sorted(tmp_path):
  text, _ = _msd_text(np.random.default_rng(4), n=5000)
  inter = readers.read_msd_triplets(write(tmp_path / 'train_triplets.txt', text))
  split = strong_generalization_split(preprocess(inter, rating_threshold=None,
                                                 min_user_count=5)[0], 20)
  export(split, tmp_path / 'out')
  for name, part, attr in (('train.csv', 'train', 'train_user_ids'),
                           ('test_te.csv', 'test_te', 'test_user_ids')):
    rows = list(csv.reader(open(tmp_path / 'out' / name)))
    assert rows[0] == ['user', 'item']
    pairs = [tuple(r) for r in rows[1:]]
    assert pairs == sorted(pairs) and len(pairs) == getattr(split, part).nnz
    users, items = part_pairs(split, part, attr)
    assert pairs == list(zip(users.tolist(), items.tolist()))


def test_export_memory_does_not_grow_with_the_part(tmp_path, monkeypatch):
  """Export writes block by block: no array of every pair's (unicode) ids."""
  rng = np.random.default_rng(5)
  n_users, n_items, per_user = 5000, 2000, 40
  cols = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
  train = sp.csr_matrix((np.ones(len(cols), np.float32), cols,
                         np.arange(0, len(cols) + 1, per_user)), shape=(n_users, n_items))
  empty = sp.csr_matrix((0, n_items), dtype=np.float32)
  none = np.zeros(0, 'U40')
  split = Split(train, empty, empty, empty, empty,
                np.array([f'SO{x:016X}' for x in range(n_items)]),
                np.array([f'{x:040x}' for x in rng.permutation(n_users)]), none, none)
  monkeypatch.setattr(main_module, '_LINES', 4096, raising=False)
  tracemalloc.start()
  try:
    export(split, tmp_path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  # The pairs' ids as unicode arrays alone would take 200k * (160 + 72) bytes = 46 MB.
  assert peak < 15e6, f'export peaked at {peak / 1e6:.0f} MB'
  assert (tmp_path / 'train.csv').stat().st_size == len('user,item\n') + len(cols) * 60


# --------------------------------------------------------------- 4. held-out fraction

def test_heldout_fraction():
  users = np.repeat(np.arange(101), 6)
  items = np.tile(np.arange(6), 101)
  split = strong_generalization_split(_inter(users, items), 1, heldout_fraction=0.1)
  assert len(split.train_user_ids) == 101 - 2 * 10  # round(10.1)
  assert len(split.val_user_ids) == len(split.test_user_ids) == 10
  same = strong_generalization_split(_inter(users, items), 10)
  np.testing.assert_array_equal(split.test_user_ids, same.test_user_ids)


@pytest.mark.parametrize('f', [-0.1, 0.5, 0.7, float('nan')])
def test_heldout_fraction_out_of_range(f):
  inter = _inter(np.repeat(np.arange(20), 6), np.tile(np.arange(6), 20))
  with pytest.raises(DataError, match=r'heldout_fraction must be > 0 and < 0.5'):
    strong_generalization_split(inter, 5, heldout_fraction=f)


def test_heldout_fraction_zero_means_the_count():
  # The command line cannot spell None, so 0 is how a config with a fraction goes back
  # to n_heldout_users.
  inter = _inter(np.repeat(np.arange(20), 6), np.tile(np.arange(6), 20))
  split = strong_generalization_split(inter, 5, heldout_fraction=0.0)
  assert len(split.val_user_ids) == len(split.test_user_ids) == 5


def test_heldout_fraction_too_small_for_one_user():
  inter = _inter(np.repeat(np.arange(20), 6), np.tile(np.arange(6), 20))
  with pytest.raises(DataError, match=r'heldout_fraction=0.01 of 20 users rounds to 0'):
    strong_generalization_split(inter, 5, heldout_fraction=0.01)


def test_heldout_fraction_in_config_and_cache_key(tmp_path):
  lines = ['userId,movieId,rating,timestamp'] + [
      f'{u},{i},5,0' for u in range(50) for i in range(6)]
  write(tmp_path / 'ratings.csv', '\n'.join(lines) + '\n')
  c = base_config()
  assert c.data.heldout_fraction is None
  c.data.name, c.data.path, c.data.cache_dir = 'toy', str(tmp_path), str(tmp_path / 'c')
  c.data.n_heldout_users = 5
  assert data.load_split(c.data)[0].val_tr.shape[0] == 5
  c.data.heldout_fraction = 0.2
  split, _ = data.load_split(c.data)  # a new cache entry, not the one for 5 users
  assert split.val_tr.shape[0] == 10 and len(split.train_user_ids) == 30
  assert len(list((tmp_path / 'c' / 'splits').glob('*.npz'))) == 2
  c.data.heldout_fraction = 0.6
  with pytest.raises(DataError, match='heldout_fraction must be'):
    data.load_split(c.data)


# ------------------------------------------------------------------- 5. the scale tool

@pytest.mark.parametrize('kind', ['msd', 'netflix'])
def test_data_scale_tool_small(tmp_path, kind):
  proc = subprocess.run(
      [sys.executable, '-m', 'vaecf.tools.data_scale', f'--kind={kind}', '--scale=0.001',
       f'--dir={tmp_path}'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'{kind} scale 0.001: wall' in proc.stdout and 'peak RSS' in proc.stdout
  files = sorted(p.name for p in tmp_path.glob('*.txt'))
  if kind == 'msd':
    assert files == ['train_triplets.txt']
    line = (tmp_path / 'train_triplets.txt').read_text().split('\n', 1)[0].split('\t')
    assert len(line[0]) == 40 and int(line[0], 16) >= 0
    assert len(line[1]) == 18 and line[1].startswith('SO') and int(line[2]) >= 1
    inter = readers.read_msd_triplets(tmp_path / 'train_triplets.txt')
    assert len(inter) == 48374
  else:
    assert files == [f'combined_data_{k}.txt' for k in (1, 2, 3, 4)]
    first = (tmp_path / 'combined_data_2.txt').read_text().split('\n', 1)[0]
    assert first.endswith(':') and 4500 <= int(first[:-1]) < 9211
    inter = readers.read_netflix(tmp_path)
    assert len(inter) == 100481 and inter.item_ids.max() <= 17770
    assert set(np.unique(inter.values).tolist()) <= {1, 2, 3, 4, 5}
  # Distinct pairs, as in the real files.
  key = inter.user_codes.astype(np.int64) * len(inter.item_ids) + inter.item_codes
  assert len(np.unique(key)) == len(key)
  for name in ('train.csv', 'test_te.csv'):
    assert (tmp_path / 'export' / name).read_text().startswith('user,item\n')
