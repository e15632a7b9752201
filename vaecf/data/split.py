"""Preprocessing and the paper's strong-generalisation split (docs/protocol.md, steps 1-4).

The split reproduces the authors' notebook draw for draw: the same legacy
`np.random` streams, the same user order (sorted ids, then permuted) and the same
item numbering (first appearance among training interactions).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

from vaecf.data.types import DataError, Interactions, Split


@dataclasses.dataclass(frozen=True)
class PreprocessReport:
  raw: int
  duplicates: int
  below_threshold: int
  dropped_by_item_count: int
  dropped_by_user_count: int
  kept: int
  users: int
  items: int


def sorted_unique(a: np.ndarray) -> np.ndarray:
  """np.unique by sorting: numpy 2's hash-based np.unique is several times slower here."""
  a = np.sort(a, kind='stable')
  return a[np.concatenate([[True], a[1:] != a[:-1]])] if len(a) else a


def _first_of_pairs(inter: Interactions) -> np.ndarray | None:
  """Mask of the first row of each (user, item) pair; None when no pair repeats."""
  def pair_keys():
    return inter.user_codes.astype(np.int64) * max(1, len(inter.item_ids)) + inter.item_codes
  # An in-place sort needs no index array and no second copy: the common case
  # (no duplicate) pays for nothing more.
  key = pair_keys()
  key.sort()
  if not (key[1:] == key[:-1]).any():
    return None
  key = pair_keys()
  order = np.argsort(key, kind='stable')  # equal pairs in file order
  key = key[order]
  later = order[1:][key[1:] == key[:-1]]
  keep = np.ones(len(inter), bool)
  keep[later] = False
  return keep


def _count_filter(codes: np.ndarray, n_ids: int, min_count: int) -> np.ndarray:
  """Mask of rows whose id occurs at least `min_count` times."""
  return np.bincount(codes, minlength=n_ids)[codes] >= min_count


def _n_present(codes: np.ndarray, n_ids: int) -> int:
  return int(np.count_nonzero(np.bincount(codes, minlength=n_ids)))


def preprocess(inter: Interactions, *, rating_threshold: float | None,
               min_user_count: int, min_item_count: int = 0
               ) -> tuple[Interactions, PreprocessReport]:
  """Threshold, de-duplicate, then filter items and (afterwards) users, once each.

  Mirrors the authors' `filter_triplets`: keep value > threshold; drop items with
  fewer than `min_item_count` users; then drop users with fewer than
  `min_user_count` items. A (user, item) pair seen twice counts once (first row kept).
  """
  n_raw = len(inter)
  if n_raw == 0:
    raise DataError(f'{inter.source}: no interactions were read')
  below = 0
  if rating_threshold is not None:
    keep = inter.values > rating_threshold
    below = int((~keep).sum())
    inter = inter.take(keep)
  first = _first_of_pairs(inter) if len(inter) else None
  dups = 0 if first is None else len(inter) - int(first.sum())
  if dups:
    inter = inter.take(first)
  n0 = len(inter)
  if min_item_count > 0:
    inter = inter.take(_count_filter(inter.item_codes, len(inter.item_ids), min_item_count))
  n1 = len(inter)
  if min_user_count > 0:
    inter = inter.take(_count_filter(inter.user_codes, len(inter.user_ids), min_user_count))
  if len(inter) == 0:
    raise DataError(
        f'{inter.source}: nothing left after filtering (rating > {rating_threshold}, '
        f'items with >= {min_item_count} users, users with >= {min_user_count} items)')
  report = PreprocessReport(
      raw=n_raw, duplicates=dups, below_threshold=below,
      dropped_by_item_count=n0 - n1, dropped_by_user_count=n1 - len(inter),
      kept=len(inter), users=_n_present(inter.user_codes, len(inter.user_ids)),
      items=_n_present(inter.item_codes, len(inter.item_ids)))
  return inter, report


def _first_appearance(codes: np.ndarray, n_ids: int) -> np.ndarray:
  """The distinct codes in order of first appearance (pandas.unique semantics)."""
  n = len(codes)
  first = np.full(n_ids, n, np.int64)
  step = 1 << 22  # in slices: no full-length index array
  for s in range(0, n, step):
    np.minimum.at(first, codes[s:s + step], np.arange(s, min(n, s + step)))
  seen = np.flatnonzero(first < n)
  return seen[np.argsort(first[seen])]


def split_fold_in(n_items_per_user: np.ndarray, *, seed: int, test_prop: float,
                  min_items: int = 5) -> list[np.ndarray | None]:
  """Per user (in the given order) the positions drawn as targets, or None.

  One legacy RandomState re-seeded per group, `choice(n, int(test_prop * n))`
  per user with n >= min_items, exactly as the authors' split_train_test_proportion.
  """
  rs = np.random.RandomState(seed)
  out = []
  for n in n_items_per_user:
    n = int(n)
    if n >= min_items:
      out.append(rs.choice(n, size=int(test_prop * n), replace=False).astype(np.int64))
    else:
      out.append(None)
  return out


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> sp.csr_matrix:
  """Binary float32 CSR of the (row, col) pairs, a pair given twice counted once.

  Built from one sort of int64 pair keys: scipy's COO route holds several
  copies of the pairs, too many for the MSD's 30M+ training pairs.
  """
  key = rows.astype(np.int64) * max(1, n_cols) + cols
  key.sort()
  if len(key) > 1 and (key[1:] == key[:-1]).any():
    key = key[np.concatenate([[True], key[1:] != key[:-1]])]
  dtype = np.int32 if max(len(key), n_cols, n_rows) < 2**31 - 1 else np.int64
  indptr = np.searchsorted(key, np.arange(n_rows + 1, dtype=np.int64) * max(1, n_cols))
  indices = (key % max(1, n_cols)).astype(dtype)
  del key
  return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr.astype(dtype)),
                       shape=(n_rows, n_cols))


def _lookup(keys: np.ndarray, n_ids: int) -> np.ndarray:
  """Position of each code in `keys` (-1 for codes not in it), as a table by code."""
  table = np.full(n_ids, -1, np.int32)
  table[keys] = np.arange(len(keys), dtype=np.int32)
  return table


def _heldout(inter: Interactions, rows: np.ndarray, group_users: np.ndarray,
             col_of: np.ndarray, *, name: str, seed: int, test_prop: float, min_items: int):
  """Fold-in/target CSR for one held-out group; rows follow `group_users` order.

  `rows` are the group's rows of `inter`. Users left with no item seen in
  training vanish, as in the authors' code. A group in which no user gets a
  target is an error: its metrics would be NaN.
  """
  users = inter.user_codes[rows]
  cols = col_of[inter.item_codes[rows]]
  users, cols = users[cols >= 0], cols[cols >= 0]
  # Stable sort: users by sorted id (pandas groupby order), items in file order.
  order = np.argsort(users, kind='stable')
  users, cols = users[order], cols[order]
  starts = np.flatnonzero(np.concatenate([[True], users[1:] != users[:-1]])) if len(users) \
      else np.zeros(0, np.int64)
  counts = np.diff(np.append(starts, len(users)))
  picks = split_fold_in(counts, seed=seed, test_prop=test_prop, min_items=min_items)
  is_target = np.zeros(len(users), bool)
  drawn = [s + p for s, p in zip(starts, picks) if p is not None]
  if drawn:
    is_target[np.concatenate(drawn)] = True
  present = group_users[np.isin(group_users, users[starts])]
  if not is_target.any():
    raise _no_targets(inter.source, name, len(group_users), len(present),
                      int((counts >= min_items).sum()), min_items, test_prop)
  row = _lookup(present, len(inter.user_ids))[users]
  n_items = int(np.count_nonzero(col_of >= 0))
  tr = _csr(row[~is_target], cols[~is_target], len(present), n_items)
  te = _csr(row[is_target], cols[is_target], len(present), n_items)
  return tr, te, present


def _no_targets(source: str, name: str, h: int, present: int, splittable: int,
                min_items: int, test_prop: float) -> DataError:
  if present == 0:
    why = 'none of them has an item that the training users have'
    fix = 'hold out more users (n_heldout_users or heldout_fraction)'
  elif splittable == 0:
    why = (f'{present} have an item seen in training, but every one has fewer than '
           f'{min_items} such items (the fewest that are split into fold-in and targets)')
    fix = (f'keep only users with >= {min_items} items (min_user_count >= {min_items}) '
           'or hold out more users (n_heldout_users or heldout_fraction)')
  else:
    why = (f'{splittable} have >= {min_items} items, but test_prop={test_prop} draws '
           'int(test_prop * n) = 0 targets from each of them')
    fix = 'raise test_prop, or min_user_count, or hold out more users'
  return DataError(f'{source}: the {name} group has no targets to score, so its metrics '
                   f'would be NaN: of its {h} users {why}. To fix it, {fix}.')


def heldout_count(n_users: int, n_heldout_users: int, heldout_fraction: float | None,
                  source: str = '') -> int:
  """Users per held-out group: round(fraction * users) if a fraction is set.

  A fraction of 0 means unset (the command line cannot spell None), so the count rules.
  """
  if heldout_fraction:
    f = float(heldout_fraction)
    if not 0 < f < 0.5:
      raise DataError(f'heldout_fraction must be > 0 and < 0.5 (two groups of that '
                      f'share of the users, the rest for training), got {heldout_fraction}')
    h = round(f * n_users)
    if h < 1:
      raise DataError(f'{source}: heldout_fraction={f} of {n_users} users rounds to 0 '
                      'held-out users; raise it or set n_heldout_users instead')
    return h
  h = int(n_heldout_users)
  if h < 1:
    raise DataError(f'n_heldout_users must be >= 1, got {h}')
  return h


def strong_generalization_split(inter: Interactions, n_heldout_users: int = 0, *,
                                seed: int = 98765, test_prop: float = 0.2,
                                min_items_to_split: int = 5,
                                heldout_fraction: float | None = None) -> Split:
  """Held-out-user split of docs/protocol.md; identical to the authors' code on the same input.

  Each held-out group has `n_heldout_users` users, or round(heldout_fraction *
  users) when `heldout_fraction` (0 < f < 0.5) is set. Works on the codes:
  the vocabularies are sorted, so code order is the authors' sorted-id order.
  """
  n_ids = len(inter.user_ids)
  unique_users = np.flatnonzero(np.bincount(inter.user_codes, minlength=n_ids))
  n = len(unique_users)
  h = heldout_count(n, n_heldout_users, heldout_fraction, inter.source)
  if n - 2 * h < 1:
    asked = f'heldout_fraction={heldout_fraction} gives ' if heldout_fraction is not None else ''
    raise DataError(f'{inter.source}: {n} users after filtering, too few for {asked}'
                    f'{h} validation + {h} test users and at least one training user')
  perm = np.random.RandomState(seed).permutation(n)
  users = unique_users[perm]
  tr_users, vd_users, te_users = users[:n - 2 * h], users[n - 2 * h:n - h], users[n - h:]

  group = np.full(n_ids, -1, np.int8)
  for g, members in enumerate((tr_users, vd_users, te_users)):
    group[members] = g
  row_group = group[inter.user_codes]
  train = row_group == 0  # a mask: 1 byte a row, where indices would take 8
  train_items = inter.item_codes[train]
  item_order = _first_appearance(train_items, len(inter.item_ids))
  col_of = _lookup(item_order, len(inter.item_ids))
  train_m = _csr(_lookup(tr_users, n_ids)[inter.user_codes[train]], col_of[train_items],
                 len(tr_users), len(item_order))
  del train, train_items

  kw = dict(seed=seed, test_prop=test_prop, min_items=min_items_to_split)
  val_tr, val_te, vd_present = _heldout(inter, np.flatnonzero(row_group == 1), vd_users,
                                        col_of, name='validation', **kw)
  te_tr, te_te, te_present = _heldout(inter, np.flatnonzero(row_group == 2), te_users,
                                      col_of, name='test', **kw)
  ids = inter.user_ids
  return Split(train=train_m, val_tr=val_tr, val_te=val_te, test_tr=te_tr, test_te=te_te,
               item_ids=inter.item_ids[item_order], train_user_ids=ids[tr_users],
               val_user_ids=ids[vd_present], test_user_ids=ids[te_present])
