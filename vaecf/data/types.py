"""Plain containers passed between the readers, the split and the models."""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp


class DataError(ValueError):
  """Bad input data: the message names the file (and line) at fault."""


@dataclasses.dataclass(frozen=True)
class Interactions:
  """Raw (user, item, value) triplets with ORIGINAL ids, in file order.

  `users` and `items` are integer arrays or unicode string arrays (MSD ids are
  strings); `values` is float32 (a rating or a play count).
  """
  users: np.ndarray
  items: np.ndarray
  values: np.ndarray
  source: str = ''

  def __post_init__(self):
    n = len(self.users)
    if len(self.items) != n or len(self.values) != n:
      raise DataError(f'{self.source}: users/items/values lengths differ')

  def __len__(self) -> int:
    return len(self.users)

  def take(self, mask_or_idx) -> 'Interactions':
    return Interactions(self.users[mask_or_idx], self.items[mask_or_idx],
                        self.values[mask_or_idx], self.source)


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
