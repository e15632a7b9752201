"""Baselines of the paper's comparison table, trained on training users, folded in per user.

Registry: `fit(name, train_csr, hparams) -> Fitted`; `Fitted.score_fn(csr_batch) -> [B, I]`
scores every item for a batch of (fold-in) users, ready for `vaecf.evaluate.evaluate`.

  popularity  item counts among training users (the floor)
  ease        Steck 2019, closed form
  edlae       Steck 2020, emphasized denoising linear autoencoder, full-rank closed form
  wmf         Hu, Koren & Volinsky 2008, implicit ALS; held-out users by one solve
  slim        Ning & Karypis 2011, non-negative elastic net with zero diagonal (ADMM)
  cdae        Wu et al. 2016, per-user input node fitted at fold-in

Each module defines `GRID` (the documented hyperparameter grid searched on validation
users), `fit(train, hparams, validation=None) -> (arrays, info)` and
`make_score_fn(arrays, hparams) -> score_fn`.

Persisted format (the contract the recommender relies on), one folder per model:
  DIR/baseline.json  {"name": ..., "hparams": {...}, "info": {...}}
  DIR/arrays.npz     the arrays `make_score_fn` needs (numpy; names per module)
  DIR/item_ids.npy   original item id of each score column
`load(DIR)` returns a score_fn that folds in any batch of users given as a binary CSR
over those columns; nothing about the training users is needed at that point.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from vaecf.common import ScoreFn, atomic_write

NAMES = ('popularity', 'ease', 'edlae', 'wmf', 'slim', 'cdae')


def module(name: str):
  if name not in NAMES:
    raise ValueError(f'unknown baseline {name!r}; choose from {NAMES}')
  return importlib.import_module(f'vaecf.baselines.{name}')


def grid(name: str) -> list[dict]:
  """The documented hyperparameter grid of a baseline (searched on validation users)."""
  return [dict(h) for h in module(name).GRID]


@dataclasses.dataclass(frozen=True)
class Fitted:
  """A trained baseline: its arrays (numpy) and the hyperparameters that made them."""
  name: str
  hparams: dict
  arrays: dict[str, np.ndarray]
  info: dict = dataclasses.field(default_factory=dict)

  @functools.cached_property
  def score_fn(self) -> ScoreFn:
    return module(self.name).make_score_fn(self.arrays, self.hparams)


def fit(name: str, train: sp.csr_matrix, hparams: dict, *, validation=None) -> Fitted:
  """Trains `name` on the training users' binary CSR.

  `validation` = (fold_in, targets) lets iterative models (CDAE) pick their epoch
  on validation users; the others ignore it.
  """
  train = sp.csr_matrix(train, dtype=np.float32)
  arrays, info = module(name).fit(train, dict(hparams), validation=validation)
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  # A model may fix hyperparameters while fitting (CDAE's chosen epoch): keep those.
  hparams = {**hparams, **info.pop('hparams', {})}
  return Fitted(name, hparams, arrays, info)


def save(workdir: str | Path, name: str, hparams: dict, arrays: dict[str, np.ndarray],
         item_ids: np.ndarray, info: dict | None = None) -> Path:
  """Writes the persisted format; baseline.json goes last, so its presence means complete."""
  wd = Path(workdir)
  wd.mkdir(parents=True, exist_ok=True)
  atomic_write(wd / 'arrays.npz', lambda f: np.savez(f, **arrays))
  atomic_write(wd / 'item_ids.npy', lambda f: np.save(f, np.asarray(item_ids)))
  meta = {'name': name, 'hparams': hparams, 'info': info or {}}
  atomic_write(wd / 'baseline.json', json.dumps(meta, indent=2, default=float))
  return wd


def load_fitted(workdir: str | Path) -> tuple[Fitted, np.ndarray]:
  """(fitted, item_ids) from a folder written by `save`."""
  wd = Path(workdir)
  if not (wd / 'baseline.json').exists():
    raise FileNotFoundError(f'{wd} holds no saved baseline (no baseline.json)')
  meta = json.loads((wd / 'baseline.json').read_text())
  with np.load(wd / 'arrays.npz', allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  item_ids = np.load(wd / 'item_ids.npy', allow_pickle=False)
  return Fitted(meta['name'], meta['hparams'], arrays, meta.get('info', {})), item_ids


def load(workdir: str | Path) -> ScoreFn:
  """score_fn(csr_batch) -> [B, I] scores of a saved baseline (columns as item_ids.npy)."""
  return load_fitted(workdir)[0].score_fn
