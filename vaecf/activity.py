"""The paper's user-activity analysis: a metric per quintile of fold-in activity.

Test users (those with targets) are ranked by their number of fold-in items and
cut into five groups of equal size (sizes differ by at most one). Ties are broken
by row order, so a count on a boundary may fall in two neighbouring groups; each
group reports its count range.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from vaecf.evaluate import EvalResult

METRIC = 'ndcg@100'


def fold_in_counts(fold_in: sp.csr_matrix) -> np.ndarray:
  """Fold-in items per held-out user (all rows, targets or not)."""
  return np.diff(sp.csr_matrix(fold_in).indptr)


def activity_groups(counts_U: np.ndarray, n_groups: int = 5) -> np.ndarray:
  """Group index (0 = least active) of each user; equal-size groups by rank."""
  counts_U = np.asarray(counts_U)
  order = np.argsort(counts_U, kind='stable')
  group_U = np.empty(len(counts_U), np.int64)
  for g, members in enumerate(np.array_split(order, n_groups)):
    group_U[members] = g
  return group_U


def breakdown(result: EvalResult, counts: np.ndarray, *, metric: str = METRIC,
              n_groups: int = 5) -> list[dict]:
  """Per activity group: users, fold-in count range, mean and standard error of `metric`.

  `counts` holds every held-out row's fold-in count; `result.rows` picks the users
  that were evaluated.
  """
  counts_U = np.asarray(counts)[result.rows]
  values_U = result.per_user[metric]
  group_U = activity_groups(counts_U, n_groups)
  out = []
  for g in range(n_groups):
    sel = group_U == g
    if not sel.any():
      continue
    v = values_U[sel]
    out.append({'group': g, 'n_users': int(sel.sum()), 'min_items': int(counts_U[sel].min()),
                'max_items': int(counts_U[sel].max()), metric: float(v.mean()),
                metric + '_se': float(v.std() / np.sqrt(len(v)))})
  return out


def markdown_table(tables: dict[str, list[dict]], metric: str = METRIC) -> str:
  """One row per activity group, one column per model: 'mean (s.e.)'."""
  names = list(tables)
  first = tables[names[0]]
  head = ['quintile', 'fold-in items', 'users', *names]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for i, g in enumerate(first):
    cells = [f'Q{g["group"] + 1}', f'{g["min_items"]}-{g["max_items"]}', str(g['n_users'])]
    cells += [f'{tables[n][i][metric]:.4f} ({tables[n][i][metric + "_se"]:.4f})' for n in names]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
