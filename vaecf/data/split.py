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


def _pair_codes(users: np.ndarray, items: np.ndarray) -> np.ndarray:
  _, u = np.unique(users, return_inverse=True)
  _, i = np.unique(items, return_inverse=True)
  return u.astype(np.int64) * (int(i.max()) + 1 if len(i) else 1) + i


def _count_filter(keys: np.ndarray, min_count: int) -> np.ndarray:
  """Mask of rows whose key occurs at least `min_count` times."""
  _, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
  return counts[inv] >= min_count


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
  codes = _pair_codes(inter.users, inter.items)
  _, first = np.unique(codes, return_index=True)
  dups = len(inter) - len(first)
  if dups:
    inter = inter.take(np.sort(first))
  n0 = len(inter)
  if min_item_count > 0:
    inter = inter.take(_count_filter(inter.items, min_item_count))
  n1 = len(inter)
  if min_user_count > 0:
    inter = inter.take(_count_filter(inter.users, min_user_count))
  if len(inter) == 0:
    raise DataError(
        f'{inter.source}: nothing left after filtering (rating > {rating_threshold}, '
        f'items with >= {min_item_count} users, users with >= {min_user_count} items)')
  report = PreprocessReport(
      raw=n_raw, duplicates=dups, below_threshold=below,
      dropped_by_item_count=n0 - n1, dropped_by_user_count=n1 - len(inter),
      kept=len(inter), users=len(sorted_unique(inter.users)), items=len(sorted_unique(inter.items)))
  return inter, report


def _first_appearance(ids: np.ndarray) -> np.ndarray:
  """Unique values in order of first appearance (pandas.unique semantics)."""
  _, first = np.unique(ids, return_index=True)
  return ids[np.sort(first)]


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
  m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_rows, n_cols))
  m.sum_duplicates()
  m.sort_indices()
  return m


def _index_of(values: np.ndarray, universe: np.ndarray) -> np.ndarray:
  """Position in `universe` (unique, any order) of each of `values` (all present)."""
  order = np.argsort(universe)
  return order[np.searchsorted(universe[order], values)]


def _heldout(inter: Interactions, group_users: np.ndarray, item_ids: np.ndarray, *,
             seed: int, test_prop: float, min_items: int):
  """Fold-in/target CSR for one held-out group; rows follow `group_users` order.

  Users left with no item seen in training vanish, as in the authors' code.
  """
  sub = inter.take(np.isin(inter.users, group_users) & np.isin(inter.items, item_ids))
  # Stable sort: users by sorted id (pandas groupby order), items in file order.
  order = np.argsort(sub.users, kind='stable')
  users_sorted = sub.users[order]
  cols = _index_of(sub.items[order], item_ids)
  uniq, starts, counts = np.unique(users_sorted, return_index=True, return_counts=True)
  picks = split_fold_in(counts, seed=seed, test_prop=test_prop, min_items=min_items)
  is_target = np.zeros(len(users_sorted), bool)
  for s, p in zip(starts, picks):
    if p is not None:
      is_target[s + p] = True
  present = group_users[np.isin(group_users, uniq)]
  rows = _index_of(users_sorted, present)
  n_items = len(item_ids)
  tr = _csr(rows[~is_target], cols[~is_target], len(present), n_items)
  te = _csr(rows[is_target], cols[is_target], len(present), n_items)
  return tr, te, present


def strong_generalization_split(inter: Interactions, n_heldout_users: int, *,
                                seed: int = 98765, test_prop: float = 0.2,
                                min_items_to_split: int = 5) -> Split:
  """Held-out-user split of docs/protocol.md; identical to the authors' code on the same input."""
  unique_users = sorted_unique(inter.users)  # sorted, as pandas' groupby index
  n = len(unique_users)
  h = int(n_heldout_users)
  if h < 1:
    raise DataError(f'n_heldout_users must be >= 1, got {h}')
  if n - 2 * h < 1:
    raise DataError(f'{inter.source}: {n} users after filtering, too few for '
                    f'{h} validation + {h} test users and at least one training user')
  perm = np.random.RandomState(seed).permutation(n)
  users = unique_users[perm]
  tr_users, vd_users, te_users = users[:n - 2 * h], users[n - 2 * h:n - h], users[n - h:]

  train_mask = np.isin(inter.users, tr_users)
  train = inter.take(train_mask)
  item_ids = _first_appearance(train.items)
  cols = _index_of(train.items, item_ids)
  rows = _index_of(train.users, tr_users)
  train_m = _csr(rows, cols, len(tr_users), len(item_ids))

  kw = dict(seed=seed, test_prop=test_prop, min_items=min_items_to_split)
  val_tr, val_te, vd_present = _heldout(inter, vd_users, item_ids, **kw)
  te_tr, te_te, te_present = _heldout(inter, te_users, item_ids, **kw)
  return Split(train=train_m, val_tr=val_tr, val_te=val_te, test_tr=te_tr, test_te=te_te,
               item_ids=item_ids, train_user_ids=tr_users, val_user_ids=vd_present,
               test_user_ids=te_present)
