"""Plain containers passed between the readers, the split and the models."""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

from vaecf.common import VaecfError


class DataError(VaecfError, ValueError):
  """Bad input data: the message names the file (and line) at fault."""


@dataclasses.dataclass(frozen=True)
class Interactions:
  """(user, item, value) rows in file order, the ids as integer codes.

  `user_codes[k]` indexes `user_ids`, the sorted distinct ORIGINAL user ids
  (int64, or unicode for string ids such as the MSD's), so ordering by code is
  ordering by original id; likewise for items. Codes are int32, `values`
  float32. Each distinct id is held once, which is what lets the MSD's 48M rows
  fit in memory. After `take` the vocabularies may hold ids no row uses.
  """
  user_codes: np.ndarray
  item_codes: np.ndarray
  values: np.ndarray
  user_ids: np.ndarray
  item_ids: np.ndarray
  source: str = ''

  def __post_init__(self):
    n = len(self.user_codes)
    if len(self.item_codes) != n or len(self.values) != n:
      raise DataError(f'{self.source}: users/items/values lengths differ')
    for what, codes, ids in (('user', self.user_codes, self.user_ids),
                             ('item', self.item_codes, self.item_ids)):
      if codes.dtype.kind not in 'iu':
        raise TypeError(f'{what} codes must be integers, got {codes.dtype}')
      # Sorted vocabularies are what make code order the original id order.
      if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):
        raise ValueError(f'{self.source}: {what}_ids must be sorted and distinct')
      if n and (codes.min() < 0 or codes.max() >= len(ids)):
        raise ValueError(f'{self.source}: a {what} code is outside {what}_ids')

  @classmethod
  def from_ids(cls, users, items, values, source: str = '') -> 'Interactions':
    """From arrays of original ids (for data already in memory)."""
    user_ids, u = np.unique(np.asarray(users), return_inverse=True)
    item_ids, i = np.unique(np.asarray(items), return_inverse=True)
    return cls(u.ravel().astype(np.int32), i.ravel().astype(np.int32),
               np.asarray(values, np.float32), user_ids, item_ids, source)

  @property
  def users(self) -> np.ndarray:
    """The original user id of each row (a new array as long as the data)."""
    return self.user_ids[self.user_codes]

  @property
  def items(self) -> np.ndarray:
    """The original item id of each row (a new array as long as the data)."""
    return self.item_ids[self.item_codes]

  def __len__(self) -> int:
    return len(self.user_codes)

  def take(self, mask_or_idx) -> 'Interactions':
    return Interactions(self.user_codes[mask_or_idx], self.item_codes[mask_or_idx],
                        self.values[mask_or_idx], self.user_ids, self.item_ids, self.source)


@dataclasses.dataclass(frozen=True)
class Split:
  """The strong-generalisation split.

  Rows of `train` are training users, rows of `val_tr`/`val_te` (fold-in /
  targets) validation users and likewise for test; columns are items numbered
  in order of first appearance among training interactions. All matrices are
  binary float32 CSR.
  """
  train: sp.csr_matrix
  val_tr: sp.csr_matrix
  val_te: sp.csr_matrix
  test_tr: sp.csr_matrix
  test_te: sp.csr_matrix
  item_ids: np.ndarray
  train_user_ids: np.ndarray
  val_user_ids: np.ndarray
  test_user_ids: np.ndarray

  @property
  def n_items(self) -> int:
    return self.train.shape[1]

  def heldout(self, which: str) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    if which in ('val', 'validation'):
      return self.val_tr, self.val_te
    if which == 'test':
      return self.test_tr, self.test_te
    raise ValueError(f"unknown held-out group {which!r}: use 'val' or 'test'")
