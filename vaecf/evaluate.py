"""The one evaluator: top-K metrics under the strong-generalisation protocol.

Every model (VAE, DAE, baselines) is scored here through a `score_fn` that maps a
CSR batch of fold-in rows to dense scores for all items. Only one batch of dense
scores exists at a time; masking, top-k and the metrics run on the accelerator.

Fold-in items are removed from the ranking and users without targets are left out.
One jitted top-k with the largest K named gives a [B, K] hits matrix, from which every
metric is computed (K is clamped to the number of items; `n_tgt` is the user's targets):
per user, Recall@K = hits / min(K, n_tgt); NDCG@K = DCG / IDCG with binary relevance;
MRR@K = 1 / rank of the first target (0 if none); Hit@K = 1 if any target, else 0;
Precision@K = hits / K; MAP@K = (1 / min(K, n_tgt)) * sum over ranks i <= K of
rel_i * precision@i (RecBole's average precision). Per-user metrics are reported as the
mean and standard error over users. Coverage@K is a catalogue metric: the fraction of
all items in at least one evaluated user's top K, from per-batch item counts.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import scipy.sparse as sp

from vaecf import sparse

ScoreFn = Callable[[sp.csr_matrix], 'jax.Array | np.ndarray']
DEFAULT_METRICS = (('recall', 20), ('recall', 50), ('ndcg', 100))


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """Per-user metric values for the users that have targets (`rows` index them), and the
  catalogue metrics' single values (e.g. coverage@K). `names` orders `summary` (the order
  the metrics were requested); empty: per-user metrics, then catalogue ones."""
  per_user: dict[str, np.ndarray]
  rows: np.ndarray
  catalogue: dict[str, float] = dataclasses.field(default_factory=dict)
  names: tuple[str, ...] = ()

  @property
  def n_users(self) -> int:
    return len(self.rows)

  def mean(self, name: str) -> float:
    if name in self.catalogue:
      return float(self.catalogue[name])
    return float(np.mean(self.per_user[name]))

  def stderr(self, name: str) -> float:
    if name in self.catalogue:
      raise ValueError(f'{name} is a catalogue metric: it has no per-user standard error')
    v = self.per_user[name]
    return float(np.std(v) / np.sqrt(len(v)))

  def summary(self) -> dict[str, float]:
    """{'ndcg@100': mean, 'ndcg@100_se': standard error, ..., 'coverage@100': value}."""
    out = {}
    for name in self.names or (*self.per_user, *self.catalogue):
      out[name] = self.mean(name)
      if name not in self.catalogue:
        out[name + '_se'] = self.stderr(name)
    return out


def metric_name(kind: str, k: int) -> str:
  return f'{kind}@{k}'


KINDS = ('recall', 'ndcg', 'mrr', 'hit', 'precision', 'map', 'coverage')
CATALOGUE_KINDS = ('coverage',)  # one value for the whole evaluation, not one per user


def parse_metrics(names) -> tuple[tuple[str, int], ...]:
  """('recall@20', ...) or ((kind, k), ...) -> ((kind, k), ...); ValueError naming a bad one."""
  out = []
  for name in names:
    if isinstance(name, str):
      kind, sep, k = name.partition('@')
      if not sep or not k.isdigit() or int(k) < 1:
        raise ValueError(f'{name!r} is not name@K with an integer K >= 1 (e.g. ndcg@100)')
    else:
      try:
        kind, k = name
      except (TypeError, ValueError):
        raise ValueError(f'{name!r} is neither name@K nor a (kind, K) pair') from None
      if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f'{name!r}: K must be an integer >= 1')
    if kind not in KINDS:
      raise ValueError(f'unknown metric {kind!r} in {name!r}: one of {KINDS}')
    out.append((str(kind), int(k)))
  if not out:
    raise ValueError('no metric named')
  for i, m in enumerate(out):
    if m in out[:i]:
      raise ValueError(f'the metric {metric_name(*m)} is named twice')
  return tuple(out)


def _member(sorted_BxT, items_BxK):
  """[B, K] bool: is items[b, k] in row b of sorted_BxT (ascending)? Binary search, so no
  dense [B, I] mask; padding is sorted last as the id n_items, which no item equals."""
  pos_BxK = jax.vmap(jnp.searchsorted)(sorted_BxT, items_BxK)
  found = jnp.take_along_axis(sorted_BxT, jnp.minimum(pos_BxK, sorted_BxT.shape[1] - 1),
                              axis=1)
  return found == items_BxK


@functools.partial(jax.jit, static_argnames=('metrics',))
def batch_metrics(scores_BxI, fold_idx_BxL, fold_val_BxL, tgt_idx_BxT, tgt_val_BxT,
                  metrics: tuple[tuple[str, int], ...]):
  """({name: [B] per-user values}, {name: [I] item counts}) for one batch.

  Fold-in items are excluded from the ranking. The counts (catalogue metrics) tell how
  many of the batch's users with targets have each item in their top K; padding rows and
  users without targets count for nothing.
  """
  b, n_items = scores_BxI.shape
  rows = jnp.arange(b)[:, None]
  scores = scores_BxI.astype(jnp.float32)
  fold_cols = jnp.where(fold_val_BxL > 0, fold_idx_BxL, n_items)  # padding -> dropped
  scores = scores.at[rows, fold_cols].set(-jnp.inf, mode='drop')
  k_max = min(max(k for _, k in metrics), n_items)
  _, top_BxK = jax.lax.top_k(scores, k_max)
  tgt_sorted_BxT = jnp.sort(jnp.where(tgt_val_BxT > 0, tgt_idx_BxT, n_items), axis=1)
  hits = _member(tgt_sorted_BxT, top_BxK).astype(jnp.float32)
  n_tgt = (tgt_val_BxT > 0).sum(axis=1)
  discount = 1.0 / jnp.log2(jnp.arange(2, k_max + 2, dtype=jnp.float32))
  ranks = jnp.arange(1, k_max + 1, dtype=jnp.float32)
  if any(kind in CATALOGUE_KINDS for kind, _ in metrics):
    # A top-K slot counts if its user has targets and its item is no fold-in item (those
    # fill the tail of the top K only when K exceeds the user's candidates).
    fold_sorted_BxL = jnp.sort(fold_cols, axis=1)
    counted = (n_tgt[:, None] > 0) & ~_member(fold_sorted_BxL, top_BxK)
  per_user, counts = {}, {}
  for kind, k in metrics:
    kk = min(k, n_items)
    h = hits[:, :kk]
    if kind == 'recall':
      value = h.sum(1) / jnp.maximum(jnp.minimum(k, n_tgt), 1)
    elif kind == 'ndcg':
      dcg = (h * discount[:kk]).sum(1)
      # The same reduction as DCG, so a perfect ranking gives exactly 1.
      ideal = (jnp.arange(kk)[None, :] < n_tgt[:, None]).astype(jnp.float32)
      idcg = (ideal * discount[:kk]).sum(1)
      value = dcg / jnp.maximum(idcg, 1e-12)
    elif kind == 'mrr':
      value = (h / ranks[:kk]).max(1)  # the first hit has the largest 1 / rank
    elif kind == 'hit':
      value = h.max(1)
    elif kind == 'precision':
      value = h.sum(1) / kk
    elif kind == 'map':
      precision_at = jnp.cumsum(h, axis=1) / ranks[:kk]
      value = (h * precision_at).sum(1) / jnp.maximum(jnp.minimum(k, n_tgt), 1)
    elif kind == 'coverage':
      slots = counted[:, :kk].astype(jnp.int32)
      counts[metric_name(kind, k)] = jnp.zeros(n_items, jnp.int32).at[top_BxK[:, :kk]].add(
          slots)
      continue
    else:
      raise ValueError(f'unknown metric {kind!r}: one of {KINDS}')
    per_user[metric_name(kind, k)] = value
  return per_user, counts


def _host(tree):
  """A batch's outputs as NumPy. With several processes, jitted outputs over the global
  batch span every process's devices and are gathered whole (per-user values for all the
  batch's users, item counts summed over all of them); outputs a process computed alone
  (from a host score_fn) already cover the whole batch, as every process runs every batch."""
  def one(v):
    if isinstance(v, jax.Array) and not v.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(v, tiled=True))
    return np.asarray(jax.device_get(v))
  return jax.tree.map(one, tree)


def _evaluate(score_fn, fold_in: sp.csr_matrix, targets: sp.csr_matrix, metrics,
              batch_size: int, n_models: int | None):
  """(per-user arrays, [U] each or [M, U] with a leading model axis; catalogue values,
  floats or [M]; the rows kept; the metric names in the order asked)."""
  if fold_in.shape != targets.shape:
    raise ValueError(f'fold-in {fold_in.shape} and targets {targets.shape} differ in shape')
  metrics = parse_metrics(metrics)
  names = tuple(metric_name(kind, k) for kind, k in metrics)
  keep = np.flatnonzero(np.diff(targets.indptr) > 0)
  fold_in, targets = fold_in[keep], targets[keep]
  batch_size = max(1, min(batch_size, max(len(keep), 1)))
  lead = () if n_models is None else (n_models,)
  n_items = fold_in.shape[1]
  chunks = {metric_name(kind, k): [] for kind, k in metrics if kind not in CATALOGUE_KINDS}
  totals = {metric_name(kind, k): np.zeros(lead + (n_items,), np.int64)
            for kind, k in metrics if kind in CATALOGUE_KINDS}
  for start, stop, fold_b in sparse.batches(fold_in, batch_size):
    scores = score_fn(fold_b)
    if tuple(scores.shape) != lead + fold_b.shape:
      raise ValueError(f'score_fn returned shape {tuple(scores.shape)}, expected '
                       f'{lead + fold_b.shape}')
    f_idx, f_val = sparse.to_padded(fold_b)
    t_idx, t_val = sparse.to_padded(sparse.pad_rows(targets[start:stop], batch_size))
    if n_models is None:
      vals, counts = batch_metrics(scores, f_idx, f_val, t_idx, t_val, metrics)
    else:
      vals, counts = _models_metrics(metrics)(scores, f_idx, f_val, t_idx, t_val)
    vals, counts = _host((vals, counts))
    for name, v in vals.items():
      chunks[name].append(v[..., :stop - start])
    for name, c in counts.items():
      totals[name] += c
  empty = np.zeros(lead + (0,), np.float32)
  per_user = {k: (np.concatenate(v, axis=-1) if v else empty) for k, v in chunks.items()}
  catalogue = {k: (c > 0).mean(axis=-1) for k, c in totals.items()}
  return per_user, catalogue, keep, names


@functools.lru_cache(maxsize=None)
def _models_metrics(metrics: tuple[tuple[str, int], ...]):
  per_model = functools.partial(batch_metrics, metrics=metrics)
  return jax.jit(jax.vmap(per_model, in_axes=(0, None, None, None, None)))


def evaluate(score_fn: ScoreFn, fold_in: sp.csr_matrix, targets: sp.csr_matrix, *,
             metrics: Sequence[tuple[str, int] | str] = DEFAULT_METRICS,
             batch_size: int = 2000) -> EvalResult:
  """Scores every held-out user with targets; users without targets are left out.

  `metrics`: names ('recall@20') or (kind, K) pairs, kinds from KINDS.
  """
  per_user, catalogue, keep, names = _evaluate(score_fn, fold_in, targets, metrics,
                                               batch_size, None)
  return EvalResult(per_user=per_user, rows=keep,
                    catalogue={k: float(v) for k, v in catalogue.items()}, names=names)


def evaluate_models(score_fn, fold_in: sp.csr_matrix, targets: sp.csr_matrix, n_models: int,
                    *, metrics: Sequence[tuple[str, int] | str] = DEFAULT_METRICS,
                    batch_size: int = 2000) -> list[EvalResult]:
  """`evaluate` for M models scored in one pass: score_fn(csr) -> [M, B, I].

  The same batches, masking and metrics as `evaluate`, vmapped over the model axis;
  model m's result equals `evaluate` of its own scores.
  """
  per_user, catalogue, keep, names = _evaluate(score_fn, fold_in, targets, metrics,
                                               batch_size, n_models)
  return [EvalResult(per_user={k: v[m] for k, v in per_user.items()}, rows=keep,
                     catalogue={k: float(v[m]) for k, v in catalogue.items()}, names=names)
          for m in range(n_models)]
