"""Popularity: every user gets the items ranked by how many training users clicked them.

The floor of the comparison table; no hyperparameters.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

GRID = ({},)


def fit(train: sp.csr_matrix, hparams: dict, validation=None) -> tuple[dict, dict]:
  del hparams, validation
  counts_I = np.asarray((train > 0).sum(axis=0), np.float32).ravel()
  return {'counts': counts_I}, {}


def make_score_fn(arrays: dict, hparams: dict):
  del hparams
  counts_I = np.asarray(arrays['counts'], np.float32)

  def score_fn(x: sp.csr_matrix) -> np.ndarray:
    return np.broadcast_to(counts_I, (x.shape[0], counts_I.shape[0]))
  return score_fn
