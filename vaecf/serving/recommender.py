"""`Recommender`: top-N for users given as histories of ORIGINAL item ids (the fold-in).

It wraps any `score_fn(csr [B, I]) -> scores [B, I]` over the model's columns and
imports no model or training code, so a trained workdir (vaecf.serving.load), a
saved baseline and an export (vaecf.serving.export) are all served by this class.

Unknown ids are warned about, ignored and listed; duplicates count once (the
training data is binary). A user with no known item gets the model's `fallback`
scores (for Mult-VAE the decoder at z = 0, the prior mean; for other models their
scores for an empty row). Scores are the model's logits, comparable within one user.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from vaecf import sparse
from vaecf.common import ScoreFn

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Recommendations:
  """One user's top-N, best first, and what was made of the history."""
  items: list  # original item ids
  scores: np.ndarray
  titles: list | None  # None when the dataset has no titles
  history: list  # known ids used, deduplicated, in input order
  unknown: list  # ids given but not in the model's catalogue (ignored)
  duplicates: list  # ids given more than once (counted once)
  fallback: bool  # no known item: ranked by the model's fallback scores

  def __str__(self) -> str:
    lines = [f'{"rank":>4}  {"item":>8}  {"score":>8}  title']
    for r, (i, s) in enumerate(zip(self.items, self.scores), 1):
      t = self.titles[r - 1] if self.titles else ''
      lines.append(f'{r:>4}  {str(i):>8}  {s:8.3f}  {t or ""}')
    return '\n'.join(lines)


@functools.partial(jax.jit, static_argnames=('k',))
def _select(scores_BxI, empty_B, fallback_I, seen_idx_BxL, seen_val_BxL, k: int):
  """Top-k per row after the fallback (empty rows) and the seen-item mask."""
  scores = jnp.where(empty_B[:, None], fallback_I[None, :], scores_BxI.astype(jnp.float32))
  b, n_items = scores.shape
  cols = jnp.where(seen_val_BxL > 0, seen_idx_BxL, n_items)  # padding -> dropped
  scores = scores.at[jnp.arange(b)[:, None], cols].set(-jnp.inf, mode='drop')
  return jax.lax.top_k(scores, k)


class Recommender:
  """Ranks the catalogue for users given as histories of original item ids.

  `score_fn(csr [B, I]) -> scores [B, I]` is any scorer over model columns: the
  evaluator's for a trained model, a baseline's, or an exported function.
  """

  def __init__(self, score_fn: ScoreFn, item_ids: np.ndarray, *,
               fallback: np.ndarray | None = None, titles: Mapping | None = None,
               batch_size: int = 2000, row_multiple: int = 1, info: dict | None = None):
    self.score_fn = score_fn
    self.item_ids = np.asarray(item_ids)
    self.n_items = len(self.item_ids)
    self._int_ids = np.issubdtype(self.item_ids.dtype, np.integer)
    self._col = {k: i for i, k in enumerate(self.item_ids.tolist())}
    self.titles = dict(titles or {})
    self.batch_size, self.row_multiple = batch_size, row_multiple
    self.info = dict(info or {})
    self.model = self.params = None  # set by from_workdir for exportable models
    if fallback is None:  # the scorer's own answer for an empty row
      fallback = np.asarray(self.score_fn(sp.csr_matrix((1, self.n_items), dtype=np.float32)))[0]
    fallback = np.asarray(fallback, np.float32)
    if not np.isfinite(fallback).all():  # never rank by NaN: worst finite score instead
      log.warning('the fallback scores hold non-finite values; they are set to the '
                      'lowest finite score')
      finite = fallback[np.isfinite(fallback)]
      fallback = np.where(np.isfinite(fallback), fallback, finite.min() if finite.size else 0.0)
    self.fallback = fallback.astype(np.float32)

  # -- histories <-> model columns ---------------------------------------------------------

  def _key(self, item):
    """The catalogue's form of an id ('12', 12.0 -> 12 for integer ids); None if it has none."""
    if not self._int_ids:
      return item if isinstance(item, str) else str(item)
    if isinstance(item, (bool, np.bool_)):  # True == 1 would find item 1
      return None
    if isinstance(item, (float, np.floating)):
      return int(item) if float(item).is_integer() else None
    try:
      return int(item.strip()) if isinstance(item, str) else int(item)
    except (TypeError, ValueError):
      return None

  def encode(self, histories: Sequence[Iterable]) -> tuple[sp.csr_matrix, list[dict]]:
    """(binary CSR over model columns, per user {'history', 'unknown', 'duplicates'})."""
    indptr, cols, notes = [0], [], []
    for hist in histories:
      seen, known, unknown, dups = set(), [], [], []
      for item in ([hist] if isinstance(hist, (str, int, np.integer)) else hist):
        key = self._key(item)
        col = None if key is None else self._col.get(key)
        if col is None:
          unknown.append(item)
        elif col in seen:
          if key not in dups:
            dups.append(key)
        else:
          seen.add(col)
          known.append(key)
          cols.append(col)
      indptr.append(len(cols))
      notes.append({'history': known, 'unknown': unknown, 'duplicates': dups})
    n_unknown = sum(len(n['unknown']) for n in notes)
    if n_unknown:
      # Examples are distinct ids: one unknown id in every history is one example.
      distinct = list(dict.fromkeys(str(i) for n in notes for i in n['unknown']))
      log.warning('%d item id(s) not in the model\'s catalogue were ignored (%d distinct, '
                  'e.g. %s)', n_unknown, len(distinct), ', '.join(distinct[:5]))
    x = sp.csr_matrix((np.ones(len(cols), np.float32), np.asarray(cols, np.int32), indptr),
                      shape=(len(notes), self.n_items))
    return x, notes

  # -- scoring ------------------------------------------------------------------------------

  def _batches(self, x: sp.csr_matrix):
    """(start, stop, rows padded to a bucketed count): a few shapes, so few compiles."""
    for start in range(0, x.shape[0], self.batch_size):
      stop = min(start + self.batch_size, x.shape[0])
      rows = min(sparse.bucket_length(stop - start), self.batch_size)
      rows = -(-rows // self.row_multiple) * self.row_multiple
      yield start, stop, sparse.pad_rows(x[start:stop], rows)

  def scores(self, x: sp.csr_matrix) -> np.ndarray:
    """Dense scores [B, I] for rows over model columns; empty rows get the fallback."""
    out = np.empty(x.shape, np.float32)
    for start, stop, xb in self._batches(sp.csr_matrix(x, dtype=np.float32)):
      out[start:stop] = np.asarray(self.score_fn(xb))[:stop - start]
    empty = np.diff(x.indptr) == 0
    out[empty] = self.fallback
    return out

  def top_n(self, x: sp.csr_matrix, n: int = 10, exclude_seen: bool = True
            ) -> tuple[np.ndarray, np.ndarray]:
    """(columns [B, k], scores [B, k]), k = min(n, I); top-k runs on the accelerator.

    With `exclude_seen`, a row's own items score -inf; so does any slot beyond the
    items left to recommend.
    """
    if n < 1:
      raise ValueError(f'n must be at least 1, got {n}')
    x = sp.csr_matrix(x, dtype=np.float32)
    k = min(int(n), self.n_items)
    cols, vals = np.zeros((x.shape[0], k), np.int32), np.zeros((x.shape[0], k), np.float32)
    fallback = jnp.asarray(self.fallback)
    for start, stop, xb in self._batches(x):
      empty = np.diff(xb.indptr) == 0
      seen = sparse.to_padded(xb) if exclude_seen else (np.zeros((xb.shape[0], 1), np.int32),) * 2
      top_v, top_c = jax.device_get(_select(self.score_fn(xb), empty, fallback, *seen, k=k))
      cols[start:stop], vals[start:stop] = top_c[:stop - start], top_v[:stop - start]
    return cols, vals

  def recommend_batch(self, histories: Sequence[Iterable], n: int = 10,
                      exclude_seen: bool = True) -> list[Recommendations]:
    """Recommendations for many users at once (one scoring pass per batch)."""
    x, notes = self.encode(histories)
    cols, vals = self.top_n(x, n, exclude_seen)
    out = []
    for c, v, note in zip(cols, vals, notes):
      keep = np.isfinite(v)
      items = [self.item_ids[i].item() for i in c[keep]]
      titles = [self.titles.get(i) for i in items] if self.titles else None
      out.append(Recommendations(items=items, scores=v[keep], titles=titles,
                                 fallback=not note['history'], **note))
    return out

  def recommend(self, history: Iterable, n: int = 10, exclude_seen: bool = True
                ) -> Recommendations:
    """Top-`n` for one user given their history of original item ids."""
    return self.recommend_batch([history], n, exclude_seen)[0]

  def title(self, item) -> str | None:
    return self.titles.get(self._key(item))
