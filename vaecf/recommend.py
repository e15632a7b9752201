"""Top-N recommendations for new users from a trained workdir (the paper's fold-in).

  rec = vaecf.Recommender.from_workdir('/tmp/vaecf-default')
  print(rec.recommend([1, 2355, 3114], n=10))

  python -m vaecf.recommend --workdir=DIR --items=1,2355,3114 --n=10
  python -m vaecf.recommend --workdir=DIR --input=histories.csv --output=recs.csv
  python -m vaecf.recommend --workdir=DIR --export=DIR/export   # see vaecf/serving.py

Histories and results use ORIGINAL item ids. Unknown ids are warned about,
ignored and listed; duplicates count once (the training data is binary). A user
with no known item gets the model's `fallback` scores: for Mult-VAE the decoder
at z = 0, the prior mean (with no evidence the posterior is the prior, and
scoring always decodes the mean of z); for other models their scores for an
empty row. Scores are the model's logits, comparable within one user. This module
imports no model or training code, so an exported model (vaecf/serving.py) is
served through the same class.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import logging
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from vaecf import sparse

ScoreFn = Callable[[sp.csr_matrix], 'jax.Array | np.ndarray']


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
      logging.warning('the fallback scores hold non-finite values; they are set to the '
                      'lowest finite score')
      finite = fallback[np.isfinite(fallback)]
      fallback = np.where(np.isfinite(fallback), fallback, finite.min() if finite.size else 0.0)
    self.fallback = fallback.astype(np.float32)

  @classmethod
  def from_workdir(cls, workdir: str | Path, step: int | None = None, *,
                   titles: str | Path | bool | None = None) -> 'Recommender':
    """Loads a trained model (best checkpoint unless `step`) or a saved baseline."""
    from vaecf import serving  # imports the model code only now
    return serving.from_workdir(workdir, step, titles=titles)

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
      first = [i for n in notes for i in n['unknown']][:5]
      logging.warning('%d item id(s) not in the model\'s catalogue were ignored (e.g. %s)',
                      n_unknown, ', '.join(map(str, first)))
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

  def export(self, out_dir: str | Path, **kw) -> Path:
    """Writes the scoring function and id map for serving (see vaecf.serving)."""
    from vaecf import serving
    return serving.export(self, out_dir, **kw)


# -- the command ---------------------------------------------------------------------------

def read_histories(path: str | Path) -> dict[str, list[str]]:
  """{user: [item, ...]} from user,item rows (a 'user,item' header is allowed)."""
  out: dict[str, list[str]] = {}
  with open(path, newline='') as f:
    for lineno, row in enumerate(csv.reader(f), 1):
      if not row or (lineno == 1 and [c.strip().lower() for c in row[:2]] == ['user', 'item']):
        continue
      if len(row) < 2:
        raise ValueError(f'{path}, line {lineno}: expected user,item, got {row!r}')
      out.setdefault(row[0].strip(), []).append(row[1].strip())
  return out


def write_recommendations(path: str | Path, users: Sequence, recs: Sequence[Recommendations]
                          ) -> None:
  """user,rank,item,score rows (and title where the dataset has titles)."""
  with_titles = any(r.titles for r in recs)
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['user', 'rank', 'item', 'score'] + (['title'] if with_titles else []))
    for u, r in zip(users, recs):
      for rank, (i, s) in enumerate(zip(r.items, r.scores), 1):
        w.writerow([u, rank, i, f'{s:.6g}'] + ([r.titles[rank - 1] or ''] if with_titles else []))


def _describe_history(rec: Recommender, r: Recommendations) -> str:
  lines = [f'History: {len(r.history)} known item(s)' + (
      ' - none known, ranked by the model\'s fallback (no history)' if r.fallback else '')]
  lines += [f'  {str(i):>8}  {rec.title(i) or ""}' for i in r.history]
  if r.unknown:
    lines.append('Ignored (not in the catalogue): ' + ', '.join(map(str, r.unknown)))
  if r.duplicates:
    lines.append('Given more than once (counted once): ' + ', '.join(map(str, r.duplicates)))
  return '\n'.join(lines)


def main(argv):
  from absl import app, flags, logging as absl_logging
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:  # a user-facing command: warnings, not orbax's INFO
    absl_logging.set_verbosity(absl_logging.WARNING)
  if bool(FLAGS.workdir) == bool(FLAGS.exported):
    raise app.UsageError('give one of --workdir (a trained run) or --exported (an export)')
  if FLAGS.input and not FLAGS.output:
    raise app.UsageError('--input needs --output=recs.csv')
  if FLAGS.items is not None and FLAGS.input:
    raise app.UsageError('give --items or --input, not both')
  if FLAGS.exported:
    from vaecf import serving
    rec = serving.load_exported(FLAGS.exported)
  else:
    rec = Recommender.from_workdir(FLAGS.workdir, FLAGS.step, titles=FLAGS.titles or None)
  if FLAGS.export:
    print(f'exported to {rec.export(FLAGS.export)}')
  if FLAGS.input:
    histories = read_histories(FLAGS.input)
    users = list(histories)
    recs = rec.recommend_batch([histories[u] for u in users], FLAGS.n, FLAGS.exclude_seen)
    write_recommendations(FLAGS.output, users, recs)
    n_fb = sum(r.fallback for r in recs)
    print(f'wrote {sum(len(r.items) for r in recs)} rows for {len(users)} users to '
          f'{FLAGS.output}' + (f' ({n_fb} with no known item: fallback)' if n_fb else ''))
  elif FLAGS.items is not None:
    r = rec.recommend(FLAGS.items, FLAGS.n, FLAGS.exclude_seen)
    print(f'{_describe_history(rec, r)}\nTop {len(r.items)}:\n{r}')
    if FLAGS.output:
      write_recommendations(FLAGS.output, ['user'], [r])
  elif not FLAGS.export:
    raise app.UsageError('give --items=ID,ID,... or --input=histories.csv (or --export=DIR)')


def _define_flags():
  from absl import flags
  flags.DEFINE_string('workdir', None, 'A trained workdir (vaecf.main or a saved baseline).')
  flags.DEFINE_string('exported', None, 'An export folder (vaecf.serving) instead of a workdir.')
  flags.DEFINE_integer('step', None, 'Checkpoint step to load; default: the best.')
  flags.DEFINE_list('items', None, 'One history: original item ids, comma-separated.')
  flags.DEFINE_string('input', None, 'CSV of user,item rows: one history per user.')
  flags.DEFINE_string('output', None, 'CSV to write user,rank,item,score[,title] rows to.')
  flags.DEFINE_integer('n', 10, 'Recommendations per user.', lower_bound=1)
  flags.DEFINE_bool('exclude_seen', True, 'Leave the history\'s own items out.')
  flags.DEFINE_string('titles', None, 'A movies.csv/movies.dat/u.item (default: beside the '
                      'ratings the run was trained on).')
  flags.DEFINE_string('export', None, 'Also write an export for serving to this folder.')


if __name__ == '__main__':
  from absl import app
  _define_flags()
  app.run(main)
