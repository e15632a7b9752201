"""The one evaluator: Recall@K and NDCG@K under the strong-generalisation protocol.

Every model (VAE, DAE, baselines) is scored here through a `score_fn` that maps a
CSR batch of fold-in rows to dense scores for all items. Only one batch of dense
scores exists at a time; masking, top-k and the metrics run on the accelerator.
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
  """Per-user metric values for the users that have targets (`rows` index them)."""
  per_user: dict[str, np.ndarray]
  rows: np.ndarray

  @property
  def n_users(self) -> int:
    return len(self.rows)

  def mean(self, name: str) -> float:
    return float(np.mean(self.per_user[name]))

  def stderr(self, name: str) -> float:
    v = self.per_user[name]
    return float(np.std(v) / np.sqrt(len(v)))

  def summary(self) -> dict[str, float]:
    """{'ndcg@100': mean, 'ndcg@100_se': standard error, ...}."""
    out = {}
    for name in self.per_user:
      out[name] = self.mean(name)
      out[name + '_se'] = self.stderr(name)
    return out


def metric_name(kind: str, k: int) -> str:
  return f'{kind}@{k}'


KINDS = ('recall', 'ndcg')


def parse_metrics(names) -> tuple[tuple[str, int], ...]:
  """('recall@20', ...) or ((kind, k), ...) -> ((kind, k), ...); ValueError naming a bad one."""
  out = []
  for name in names:
    if isinstance(name, str):
      kind, sep, k = name.partition('@')
      if not sep or not k.isdigit() or int(k) < 1:
        raise ValueError(f'{name!r} is not name@K with an integer K >= 1 (e.g. ndcg@100)')
    else:
      kind, k = name
    if kind not in KINDS:
      raise ValueError(f'unknown metric {kind!r} in {name!r}: one of {KINDS}')
    out.append((str(kind), int(k)))
  if not out:
    raise ValueError('no metric named')
  if len(set(out)) != len(out):
    raise ValueError('a metric is named twice')
  return tuple(out)


@functools.partial(jax.jit, static_argnames=('metrics',))
def batch_metrics(scores_BxI, fold_idx_BxL, fold_val_BxL, tgt_idx_BxT, tgt_val_BxT,
                  metrics: tuple[tuple[str, int], ...]):
  """Per-user metrics for one batch; fold-in items are excluded from the ranking."""
  b, n_items = scores_BxI.shape
  rows = jnp.arange(b)[:, None]
  scores = scores_BxI.astype(jnp.float32)
  fold_cols = jnp.where(fold_val_BxL > 0, fold_idx_BxL, n_items)  # padding -> dropped
  scores = scores.at[rows, fold_cols].set(-jnp.inf, mode='drop')
  k_max = min(max(k for _, k in metrics), n_items)
  _, top_BxK = jax.lax.top_k(scores, k_max)
  # Membership of each top-k item in the user's sorted targets by binary search:
  # no dense [B, I] target mask (padding sorts last as the id n_items).
  tgt_sorted_BxT = jnp.sort(jnp.where(tgt_val_BxT > 0, tgt_idx_BxT, n_items), axis=1)
  pos_BxK = jax.vmap(jnp.searchsorted)(tgt_sorted_BxT, top_BxK)
  found = jnp.take_along_axis(tgt_sorted_BxT, jnp.minimum(pos_BxK, tgt_sorted_BxT.shape[1] - 1),
                              axis=1)
  hits = (found == top_BxK).astype(jnp.float32)
  n_tgt = (tgt_val_BxT > 0).sum(axis=1)
  discount = 1.0 / jnp.log2(jnp.arange(2, k_max + 2, dtype=jnp.float32))
  out = {}
  for kind, k in metrics:
    kk = min(k, n_items)
    if kind == 'recall':
      out[metric_name(kind, k)] = hits[:, :kk].sum(1) / jnp.maximum(jnp.minimum(k, n_tgt), 1)
    elif kind == 'ndcg':
      dcg = (hits[:, :kk] * discount[:kk]).sum(1)
      # The same reduction as DCG, so a perfect ranking gives exactly 1.
      ideal = (jnp.arange(kk)[None, :] < n_tgt[:, None]).astype(jnp.float32)
      idcg = (ideal * discount[:kk]).sum(1)
      out[metric_name(kind, k)] = dcg / jnp.maximum(idcg, 1e-12)
    else:
      raise ValueError(f'unknown metric {kind!r}: use recall or ndcg')
  return out


def _per_user(score_fn, fold_in: sp.csr_matrix, targets: sp.csr_matrix, metrics,
              batch_size: int, n_models: int | None):
  """Per-user metric arrays ([U] each; [M, U] with a leading model axis) and the rows kept."""
  if fold_in.shape != targets.shape:
    raise ValueError(f'fold-in {fold_in.shape} and targets {targets.shape} differ in shape')
  metrics = parse_metrics(metrics)
  keep = np.flatnonzero(np.diff(targets.indptr) > 0)
  fold_in, targets = fold_in[keep], targets[keep]
  batch_size = max(1, min(batch_size, max(len(keep), 1)))
  lead = () if n_models is None else (n_models,)
  chunks = {metric_name(kind, k): [] for kind, k in metrics}
  for start, stop, fold_b in sparse.batches(fold_in, batch_size):
    scores = score_fn(fold_b)
    if tuple(scores.shape) != lead + fold_b.shape:
      raise ValueError(f'score_fn returned shape {tuple(scores.shape)}, expected '
                       f'{lead + fold_b.shape}')
    f_idx, f_val = sparse.to_padded(fold_b)
    t_idx, t_val = sparse.to_padded(sparse.pad_rows(targets[start:stop], batch_size))
    if n_models is None:
      vals = batch_metrics(scores, f_idx, f_val, t_idx, t_val, metrics)
    else:
      vals = _models_metrics(metrics)(scores, f_idx, f_val, t_idx, t_val)
    if jax.process_count() > 1:  # per-user values live on every process's devices
      vals = multihost_utils.process_allgather(vals, tiled=n_models is None)
      if n_models is not None:  # gathered on a new leading axis: users follow models
        vals = jax.tree.map(lambda v: np.concatenate(list(v), axis=-1), vals)
    for name, v in jax.device_get(vals).items():
      chunks[name].append(np.asarray(v)[..., :stop - start])
  empty = np.zeros(lead + (0,), np.float32)
  return {k: (np.concatenate(v, axis=-1) if v else empty) for k, v in chunks.items()}, keep


@functools.lru_cache(maxsize=None)
def _models_metrics(metrics: tuple[tuple[str, int], ...]):
  per_model = functools.partial(batch_metrics, metrics=metrics)
  return jax.jit(jax.vmap(per_model, in_axes=(0, None, None, None, None)))


def evaluate(score_fn: ScoreFn, fold_in: sp.csr_matrix, targets: sp.csr_matrix, *,
             metrics: Sequence[tuple[str, int]] = DEFAULT_METRICS,
             batch_size: int = 2000) -> EvalResult:
  """Scores every held-out user with targets; users without targets are left out."""
  per_user, keep = _per_user(score_fn, fold_in, targets, metrics, batch_size, None)
  return EvalResult(per_user=per_user, rows=keep)


def evaluate_models(score_fn, fold_in: sp.csr_matrix, targets: sp.csr_matrix, n_models: int,
                    *, metrics: Sequence[tuple[str, int]] = DEFAULT_METRICS,
                    batch_size: int = 2000) -> list[EvalResult]:
  """`evaluate` for M models scored in one pass: score_fn(csr) -> [M, B, I].

  The same batches, masking and metrics as `evaluate`, vmapped over the model axis;
  model m's result equals `evaluate` of its own scores.
  """
  per_user, keep = _per_user(score_fn, fold_in, targets, metrics, batch_size, n_models)
  return [EvalResult(per_user={k: v[m] for k, v in per_user.items()}, rows=keep)
          for m in range(n_models)]
