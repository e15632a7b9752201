"""Preprocessing and the strong-generalisation split against the authors' pandas code."""
from __future__ import annotations

import gzip
import io

import numpy as np
import pandas as pd
import pytest

from vaecf.data.split import preprocess, strong_generalization_split
from vaecf.data.types import DataError, Interactions

SEED = 98765


# ----------------------------------------------------------------------------------------
# Independent reference: the authors' ML-20M notebook, rewritten with pandas.
# ----------------------------------------------------------------------------------------

def _authors_filter(raw: pd.DataFrame, threshold, min_uc: int, min_sc: int) -> pd.DataFrame:
  """Threshold, then filter_triplets (items first, then users)."""
  if threshold is not None:
    raw = raw[raw['rating'] > threshold]
  if min_sc > 0:
    itemcount = raw.groupby('movieId').size()
    raw = raw[raw['movieId'].isin(itemcount.index[itemcount >= min_sc])]
  if min_uc > 0:
    usercount = raw.groupby('userId').size()
    raw = raw[raw['userId'].isin(usercount.index[usercount >= min_uc])]
  return raw


def _authors_train_test_proportion(data: pd.DataFrame, test_prop: float = 0.2):
  """split_train_test_proportion: re-seeds the global stream, users in sorted order."""
  tr_list, te_list = [], []
  np.random.seed(98765)
  for _, group in data.groupby('userId'):
    n_items_u = len(group)
    if n_items_u >= 5:
      idx = np.zeros(n_items_u, dtype='bool')
      idx[np.random.choice(n_items_u, size=int(test_prop * n_items_u),
                           replace=False).astype('int64')] = True
      tr_list.append(group[np.logical_not(idx)])
      te_list.append(group[idx])
    else:
      tr_list.append(group)
  empty = data.iloc[:0]
  return pd.concat(tr_list or [empty]), pd.concat(te_list or [empty])


def _authors_split(raw: pd.DataFrame, *, threshold, min_uc: int, min_sc: int, h: int):
  """The whole notebook pipeline; returns plain python/pandas results."""
  state = np.random.get_state()
  try:
    raw = _authors_filter(raw, threshold, min_uc, min_sc)
    unique_uid = raw.groupby('userId').size().index
    np.random.seed(98765)
    idx_perm = np.random.permutation(unique_uid.size)
    unique_uid = unique_uid[idx_perm]
    n_users = unique_uid.size
    tr_users = unique_uid[:(n_users - h * 2)]
    vd_users = unique_uid[(n_users - h * 2):(n_users - h)]
    te_users = unique_uid[(n_users - h):]
    train_plays = raw.loc[raw['userId'].isin(tr_users)]
    unique_sid = pd.unique(train_plays['movieId'])
    profile2id = {pid: i for i, pid in enumerate(unique_uid)}
    out = dict(raw=raw, tr_users=np.asarray(tr_users), unique_sid=np.asarray(unique_sid),
               train=train_plays, vd_users=np.asarray(vd_users),
               te_users=np.asarray(te_users))
    for name, users in (('val', vd_users), ('test', te_users)):
      plays = raw.loc[raw['userId'].isin(users)]
      plays = plays.loc[plays['movieId'].isin(unique_sid)]
      p_tr, p_te = _authors_train_test_proportion(plays)
      present = pd.unique(pd.concat([p_tr, p_te])['userId'])
      # The authors number rows by position in the permuted unique_uid.
      out[name + '_users'] = np.asarray(sorted(present, key=profile2id.__getitem__))
      out[name + '_tr'], out[name + '_te'] = p_tr, p_te
    return out
  finally:
    np.random.set_state(state)


# ----------------------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------------------

def _norm(ids) -> np.ndarray:
  """A comparable numpy array of ids (int64 or python str)."""
  a = np.asarray(ids)
  if a.dtype.kind in 'iu':
    return a.astype(np.int64)
  return np.asarray([str(x) for x in a], dtype=object)


def _pairs_df(df: pd.DataFrame) -> set:
  return set(zip(_norm(df['userId']).tolist(), _norm(df['movieId']).tolist()))


def _pairs_csr(m, row_ids, col_ids) -> set:
  coo = m.tocoo()
  return set(zip(_norm(row_ids)[coo.row].tolist(), _norm(col_ids)[coo.col].tolist()))


def _assert_binary(m, name):
  assert m.dtype == np.float32, name
  assert np.all(m.data == 1.0), f'{name}: non-binary entries'
  c = m.tocsr().copy()
  c.sum_duplicates()
  assert c.nnz == m.nnz, f'{name}: duplicate entries'


def _assert_same_pairs(name, got: set, want: set):
  if got != want:
    extra, missing = sorted(got - want)[:5], sorted(want - got)[:5]
    pytest.fail(f'{name}: {len(got - want)} unexpected pairs (e.g. {extra}), '
                f'{len(want - got)} missing (e.g. {missing})')


def _interactions(df: pd.DataFrame, source='test') -> Interactions:
  users = df['userId'].to_numpy()
  items = df['movieId'].to_numpy()
  if users.dtype == object or users.dtype.kind not in 'iu':
    users = np.asarray(users, dtype=str)
  if items.dtype == object or items.dtype.kind not in 'iu':
    items = np.asarray(items, dtype=str)
  return Interactions.from_ids(users, items, df['rating'].to_numpy(np.float32), source)


def _run_both(df, *, threshold, min_uc, min_sc, h):
  """(authors' reference, project Interactions, project Split) on the same ratings."""
  ref = _authors_split(df, threshold=threshold, min_uc=min_uc, min_sc=min_sc, h=h)
  inter, _ = preprocess(_interactions(df), rating_threshold=threshold,
                        min_user_count=min_uc, min_item_count=min_sc)
  return ref, inter, strong_generalization_split(inter, h)


def _assert_matches_authors(ref, inter, split):
  """Same kept rows, item order, user orders and pairs in every matrix."""
  assert len(inter) == len(ref['raw'])
  np.testing.assert_array_equal(_norm(split.item_ids), _norm(ref['unique_sid']))
  np.testing.assert_array_equal(_norm(split.train_user_ids), _norm(ref['tr_users']))
  np.testing.assert_array_equal(_norm(split.val_user_ids), _norm(ref['val_users']))
  np.testing.assert_array_equal(_norm(split.test_user_ids), _norm(ref['test_users']))
  n_items = len(ref['unique_sid'])
  shapes = dict(train=(len(ref['tr_users']), n_items),
                val_tr=(len(ref['val_users']), n_items), val_te=(len(ref['val_users']), n_items),
                test_tr=(len(ref['test_users']), n_items),
                test_te=(len(ref['test_users']), n_items))
  for name, shape in shapes.items():
    m = getattr(split, name)
    assert m.shape == shape, name
    _assert_binary(m, name)
  _assert_same_pairs('train', _pairs_csr(split.train, split.train_user_ids, split.item_ids),
                     _pairs_df(ref['train']))
  for grp in ('val', 'test'):
    ids = getattr(split, grp + '_user_ids')
    for part in ('tr', 'te'):
      name = f'{grp}_{part}'
      _assert_same_pairs(name, _pairs_csr(getattr(split, name), ids, split.item_ids),
                         _pairs_df(ref[name]))


# ----------------------------------------------------------------------------------------
# Data sets.
# ----------------------------------------------------------------------------------------

def _synthetic_int(seed: int = 0, h: int = 40):
  """Integer ids in shuffled order, skewed lengths, threshold rows, two 'ghost' users.

  Returns (df, h, ghosts, short): ghosts are held-out users all of whose kept items
  lie outside the training items; short are held-out users left with 1..4 items.
  """
  rng = np.random.default_rng(seed)
  n_users = 330
  user_ids = rng.choice(np.arange(10_000, 99_999), n_users, replace=False)
  kept_n = np.minimum(5 + rng.geometric(0.06, n_users), 120)
  kept_n[:20] = rng.integers(1, 5, 20)  # dropped by min_uc = 5
  item_pool = rng.choice(np.arange(1, 50_000), 400, replace=False)
  pool_a, pool_b, pool_c = item_pool[:250], item_pool[250:330], item_pool[330:]
  pop_a = 1.0 / np.arange(1, 251) ** 0.9
  pop_a /= pop_a.sum()

  survivors = np.sort(user_ids[kept_n >= 5])
  perm = np.random.RandomState(SEED).permutation(len(survivors))
  heldout = survivors[perm][len(survivors) - 2 * h:]
  vd, te = heldout[:h], heldout[h:]
  ghosts = [vd[3], te[7]]
  short = {vd[5]: (3, 4), te[2]: (2, 3), vd[9]: (4, 6), te[11]: (1, 9)}
  five = {te[4]: (5, 2), vd[12]: (6, 3)}  # exactly 5 / 6 kept training items

  rows = []
  held = set(heldout.tolist())
  for u, n in zip(user_ids, kept_n):
    u = int(u)
    if u in ghosts:
      items = rng.choice(pool_b, 8, replace=False)
    elif u in short or u in five:
      n_a, n_b = short.get(u, five.get(u))
      items = np.concatenate([rng.choice(pool_a[:60], n_a, replace=False),
                              rng.choice(pool_b, n_b, replace=False)])
    elif u in held:
      n_b = int(rng.integers(0, max(1, n // 4)))
      items = np.concatenate([rng.choice(pool_a, n - n_b, replace=False, p=pop_a),
                              rng.choice(pool_b, n_b, replace=False)])
    else:
      items = rng.choice(pool_a, n, replace=False, p=pop_a)
    rest = np.setdiff1d(np.concatenate([pool_a, pool_c]), items)
    low = rng.choice(rest, int(rng.integers(0, 8)), replace=False)
    for it in items:
      rows.append((u, int(it), float(rng.choice([4.0, 4.5, 5.0]))))
    for it in low:
      rows.append((u, int(it), float(rng.choice([0.5, 1.0, 2.0, 3.0, 3.5]))))
  df = pd.DataFrame(rows, columns=['userId', 'movieId', 'rating'])
  df = df.iloc[rng.permutation(len(df))].reset_index(drop=True)
  return df, h, [int(g) for g in ghosts], [int(s) for s in short]


def _synthetic_str(seed: int = 1):
  """MSD-style: string ids, play counts, item-count filter, no threshold."""
  rng = np.random.default_rng(seed)
  n_users, n_items = 260, 500
  users = np.array([f'{x:040x}' for x in rng.integers(0, 2**62, n_users)])
  items = np.array([f'SO{x:016X}' for x in rng.integers(0, 2**62, n_items)])
  pop = 1.0 / np.arange(1, n_items + 1) ** 1.1
  pop /= pop.sum()
  rows = []
  for u in users:
    n = int(min(3 + rng.geometric(0.05), 150))
    for it in rng.choice(items, n, replace=False, p=pop):
      rows.append((u, it, float(rng.integers(1, 60))))
  df = pd.DataFrame(rows, columns=['userId', 'movieId', 'rating'])
  return df.iloc[rng.permutation(len(df))].reset_index(drop=True)


def _read_ml1m(path) -> pd.DataFrame:
  with gzip.open(path, 'rt') as f:
    text = f.read().replace('::', ',')
  return pd.read_csv(io.StringIO(text), header=None, names=['userId', 'movieId', 'rating'],
                     dtype={'userId': np.int64, 'movieId': np.int64, 'rating': np.float64})


@pytest.fixture(scope='module')
def ml1m(shared_data):
  """(ratings DataFrame, kept Interactions, Split, authors' reference), computed once."""
  df = _read_ml1m(shared_data / 'ml-1m' / 'ratings_without_timestamps.dat.gz')
  assert len(df) == 1_000_209
  ref, inter, split = _run_both(df, threshold=3.5, min_uc=5, min_sc=0, h=600)
  return df, inter, split, ref


@pytest.fixture(scope='module')
def synthetic_int():
  df, h, ghosts, short = _synthetic_int()
  ref, inter, split = _run_both(df, threshold=3.5, min_uc=5, min_sc=0, h=h)
  return df, inter, split, ref, ghosts, short


# ----------------------------------------------------------------------------------------
# 1. Same split as the authors' code.
# ----------------------------------------------------------------------------------------

def test_matches_authors_synthetic_int_ids(synthetic_int):
  """Shuffled integer ids, threshold 3.5, min_uc 5."""
  df, inter, split, ref, ghosts, short = synthetic_int
  _assert_matches_authors(ref, inter, split)
  # The data exercise what they were built for.
  assert not np.all(np.diff(df['userId'].to_numpy()) >= 0)
  assert (df['rating'] == 3.5).any()
  held_ids = set(split.val_user_ids.tolist()) | set(split.test_user_ids.tolist())
  for g in ghosts:
    assert g in set(ref['vd_users'].tolist()) | set(ref['te_users'].tolist())
    assert g not in held_ids
  assert len(split.val_user_ids) == 40 - 1 and len(split.test_user_ids) == 40 - 1
  for s in short:
    assert s in held_ids
  counts = np.diff(split.val_tr.indptr) + np.diff(split.val_te.indptr)
  assert (counts < 5).any() and (counts >= 5).any()


def test_matches_authors_string_ids_item_filter():
  df = _synthetic_str()
  ref, inter, split = _run_both(df, threshold=None, min_uc=8, min_sc=4, h=30)
  _assert_matches_authors(ref, inter, split)
  # The item filter really dropped items and, through them, users.
  assert inter.items.dtype.kind == 'U'
  assert len(np.unique(inter.items)) < df['movieId'].nunique()
  assert len(np.unique(inter.users)) < df['userId'].nunique()
  assert split.val_te.nnz > 0 and split.test_te.nnz > 0


@pytest.mark.shared
def test_the_ml1m_preset_gives_the_authors_split(ml1m, shared_data, tmp_path):
  """configs/<model>.py:ml-1m, read from the GroupLens files as a user would, is the
  authors' split byte for byte."""
  from vaecf import presets
  from vaecf.data import load_split
  _, inter, _, ref = ml1m
  c = presets.compose('multvae', 'ml-1m')
  c.data.path, c.data.cache_dir = str(shared_data / 'ml-1m'), str(tmp_path)
  split, _ = load_split(c.data, use_cache=False)
  _assert_matches_authors(ref, inter, split)


@pytest.mark.shared
def test_matches_authors_ml1m(ml1m):
  """ML-1M, ratings > 3.5, users >= 5, 600 + 600 held-out users."""
  _, inter, split, ref = ml1m
  _assert_matches_authors(ref, inter, split)
  n_users = len(np.unique(inter.users))
  assert len(split.train_user_ids) == n_users - 1200
  assert split.val_tr.shape[0] <= 600 and split.test_tr.shape[0] <= 600


def test_report_counts_synthetic():
  df, *_ = _synthetic_int()
  _, report = preprocess(_interactions(df), rating_threshold=3.5, min_user_count=5)
  above = df[df['rating'] > 3.5]
  counts = above.groupby('userId').size()
  kept = above[above['userId'].isin(counts.index[counts >= 5])]
  assert report.raw == len(df)
  assert report.duplicates == 0
  assert report.below_threshold == int((df['rating'] <= 3.5).sum())
  assert report.dropped_by_item_count == 0
  assert report.dropped_by_user_count == len(above) - len(kept)
  assert report.kept == len(kept)
  assert report.users == kept['userId'].nunique()
  assert report.items == kept['movieId'].nunique()


# ----------------------------------------------------------------------------------------
# 2. Invariants.
# ----------------------------------------------------------------------------------------

def _check_invariants(inter: Interactions, split, h: int, test_prop: float = 0.2):
  tr, vd, te = (set(_norm(split.train_user_ids).tolist()),
                set(_norm(split.val_user_ids).tolist()),
                set(_norm(split.test_user_ids).tolist()))
  assert not (tr & vd) and not (tr & te) and not (vd & te)
  all_users = set(_norm(np.unique(inter.users)).tolist())
  assert len(tr) == len(all_users) - 2 * h
  assert tr | vd | te <= all_users
  assert len(vd) <= h and len(te) <= h

  items = set(_norm(split.item_ids).tolist())
  assert len(items) == len(split.item_ids)
  kept = {}
  for u, i in zip(_norm(inter.users).tolist(), _norm(inter.items).tolist()):
    if i in items:
      kept.setdefault(u, set()).add(i)
  ids = _norm(split.item_ids)
  # Training rows hold exactly each training user's kept items.
  for r, u in enumerate(_norm(split.train_user_ids).tolist()):
    row = split.train[r]
    assert set(ids[row.indices].tolist()) == kept[u]

  for grp in ('val', 'test'):
    fold_in, target = split.heldout(grp)
    users = _norm(getattr(split, grp + '_user_ids')).tolist()
    assert fold_in.shape == target.shape == (len(users), len(split.item_ids))
    for r, u in enumerate(users):
      f = set(ids[fold_in[r].indices].tolist())
      t = set(ids[target[r].indices].tolist())
      assert not (f & t), (grp, u)
      assert f | t == kept[u], (grp, u)
      n = len(kept[u])
      assert len(t) == (int(test_prop * n) if n >= 5 else 0), (grp, u, n, len(t))
    # Held-out users with no kept training item are exactly those missing.
    group = vd if grp == 'val' else te
    assert group == set(users)


def _assert_splits_equal(a, b):
  for name in ('item_ids', 'train_user_ids', 'val_user_ids', 'test_user_ids'):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
  for name in ('train', 'val_tr', 'val_te', 'test_tr', 'test_te'):
    ma, mb = getattr(a, name), getattr(b, name)
    assert ma.shape == mb.shape and (ma != mb).nnz == 0, name


def test_invariants_synthetic(synthetic_int):
  df, inter, split, ref, *_ = synthetic_int
  _check_invariants(inter, split, 40)
  # Every held-out user of the authors' split (bar the ghosts) keeps a row.
  assert set(split.val_user_ids.tolist()) <= set(ref['vd_users'].tolist())


@pytest.mark.shared
def test_invariants_ml1m(ml1m):
  _, inter, split, _ = ml1m
  _check_invariants(inter, split, 600)


def test_invariants_string_ids():
  df = _synthetic_str()
  inter, _ = preprocess(_interactions(df), rating_threshold=None, min_user_count=8,
                        min_item_count=4)
  _check_invariants(inter, strong_generalization_split(inter, 30), 30)


def test_deterministic_and_seed_dependent(synthetic_int):
  _, inter, split, *_ = synthetic_int
  again = strong_generalization_split(inter, 40)
  _assert_splits_equal(split, again)
  other = strong_generalization_split(inter, 40, seed=12345)
  assert not np.array_equal(other.train_user_ids, split.train_user_ids)
  assert set(other.train_user_ids.tolist()) != set(split.train_user_ids.tolist())
  _check_invariants(inter, other, 40)


@pytest.mark.shared
def test_deterministic_ml1m(ml1m):
  _, inter, split, _ = ml1m
  _assert_splits_equal(split, strong_generalization_split(inter, 600))
  other = strong_generalization_split(inter, 600, seed=1)
  assert set(other.test_user_ids.tolist()) != set(split.test_user_ids.tolist())


# ----------------------------------------------------------------------------------------
# 3. preprocess.
# ----------------------------------------------------------------------------------------

def _inter(users, items, values):
  return Interactions.from_ids(np.asarray(users), np.asarray(items),
                               np.asarray(values, np.float32), 'mem')


def test_duplicates_counted_once_first_kept():
  users = [1, 1, 2, 1, 2, 1, 3]
  items = [10, 11, 10, 10, 10, 12, 10]
  values = [5, 4, 3, 2, 1, 4, 5]
  out, report = preprocess(_inter(users, items, values), rating_threshold=None,
                           min_user_count=0)
  assert report.duplicates == 2
  assert report.raw == 7 and report.kept == 5
  assert report.users == 3 and report.items == 3
  # First occurrences, in file order.
  np.testing.assert_array_equal(out.users, [1, 1, 2, 1, 3])
  np.testing.assert_array_equal(out.items, [10, 11, 10, 12, 10])
  np.testing.assert_array_equal(out.values, [5, 4, 3, 4, 5])


def test_duplicates_do_not_count_towards_filters():
  # User 1 has 5 rows but only 4 distinct items; user 2 has 5 distinct items.
  users = [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
  items = [1, 2, 3, 4, 4, 1, 2, 3, 4, 5]
  out, report = preprocess(_inter(users, items, [1] * 10), rating_threshold=None,
                           min_user_count=5)
  assert set(out.users.tolist()) == {2}
  assert report.duplicates == 1 and report.dropped_by_user_count == 4
  # Item 'x' has three rows but only two users; item 'w' has three users.
  users = ['a', 'a', 'b', 'a', 'b', 'c']
  items = ['x', 'x', 'x', 'w', 'w', 'w']
  out, report = preprocess(_inter(users, items, [1] * 6), rating_threshold=None,
                           min_user_count=0, min_item_count=3)
  assert out.items.tolist() == ['w', 'w', 'w']
  assert report.duplicates == 1 and report.dropped_by_item_count == 2


def test_threshold_keeps_strictly_greater():
  values = [3.5, 3.0, 4.0, 3.5001, 5.0, 0.5, 3.49]
  out, report = preprocess(_inter(range(7), [0] * 7, values), rating_threshold=3.5,
                           min_user_count=0)
  np.testing.assert_array_equal(out.users, [2, 3, 4])
  assert report.below_threshold == 4 and report.kept == 3
  # No threshold keeps everything, zero values included.
  out, report = preprocess(_inter(range(3), [0] * 3, [0, 1, 2]), rating_threshold=None,
                           min_user_count=0)
  assert len(out) == 3 and report.below_threshold == 0


@pytest.mark.parametrize('kwargs', [
    dict(rating_threshold=5.0, min_user_count=0),
    dict(rating_threshold=None, min_user_count=4),
    dict(rating_threshold=None, min_user_count=0, min_item_count=3),
])
def test_empty_result_raises(kwargs):
  inter = _inter([1, 1, 1, 2, 2], [1, 2, 3, 1, 2], [1, 2, 3, 4, 5])
  with pytest.raises(DataError):
    preprocess(inter, **kwargs)


def test_empty_input_raises():
  with pytest.raises(DataError):
    preprocess(_inter(np.zeros(0, np.int64), np.zeros(0, np.int64), []),
               rating_threshold=None, min_user_count=0)


def test_too_few_users_for_heldout_raises():
  users = np.repeat(np.arange(10), 6)
  items = np.tile(np.arange(6), 10)
  inter = _inter(users, items, np.ones(60))
  split = strong_generalization_split(inter, 4)  # 2 training users is enough
  assert len(split.train_user_ids) == 2
  with pytest.raises(DataError) as err:
    strong_generalization_split(inter, 5)
  msg = str(err.value)
  assert '10 users' in msg and '5' in msg
  with pytest.raises(DataError):
    strong_generalization_split(inter, 0)
