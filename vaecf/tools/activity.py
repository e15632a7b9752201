"""The paper's user-activity analysis: a metric per quintile of fold-in activity.

  python -m vaecf.tools.activity --workdirs=RUN1,RUN2 --out=DIR [--names=A,B]   (vaecf-activity)

Each workdir is a finished run of vaecf.main (its best checkpoint is restored), a
saved baseline (anything vaecf.serving.from_workdir loads) or a sweep (every
model's best parameters). All must share one split. The command writes
DIR/activity.json, DIR/activity.md and DIR/activity.png.

Test users (those with targets) are ranked by their number of fold-in items and
cut into five groups of equal size (sizes differ by at most one). Ties are broken
by row order, so a count on a boundary may fall in two neighbouring groups; each
group reports its count range.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from vaecf import distributed, evaluate as evaluation, models, sweep
from vaecf.data import load_split
from vaecf.evaluate import EvalResult
from vaecf.serving import from_workdir
from vaecf.serving.load import import_saved_model
from vaecf.tools import plots
from vaecf.workdir import load_config

log = logging.getLogger(__name__)

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


# -- the command --------------------------------------------------------------------------

def evaluate_workdir(workdir: Path, name: str, split, mesh, trust_code: bool = False) -> dict:
  """{label: EvalResult on the test users} for the run, or each model of a sweep."""
  plots.refuse_groups(workdir)
  if (workdir / 'sweep.json').exists():
    config = load_config(workdir)
    import_saved_model(config, workdir, trust_code)
    model = models.build(config, split.n_items)
    summary = json.loads((workdir / 'sweep.json').read_text())
    params_M = sweep.restore_best_params(workdir, config, split.n_items, mesh)
    for_params, batch = sweep.make_sweep_scorer(model, mesh, config.train.eval_batch_size)
    res = evaluation.evaluate_models(for_params(params_M), *split.heldout('test'),
                                     len(summary['models']), batch_size=batch)
    expected = [m.get('test', {}) for m in summary['models']]  # a tune round has none
    labels = [f'{name} [{summary.get("knob", summary["mode"])}={v:g}]'
              for v in summary['values']]
  else:
    rec = from_workdir(workdir, trust_code=trust_code)  # best checkpoint, or a baseline
    res = [evaluation.evaluate(rec.score_fn, *split.heldout('test'), batch_size=rec.batch_size)]
    saved = workdir / 'results.json'
    expected = [json.loads(saved.read_text()).get('test', {}) if saved.exists() else {}]
    labels = [name]
  for label, r, want in zip(labels, res, expected):
    if METRIC in want and abs(r.mean(METRIC) - want[METRIC]) > 1e-4:
      log.warning('%s: test ndcg@100 %.5f differs from the run\'s own %.5f', label,
                      r.mean(METRIC), want[METRIC])
  return dict(zip(labels, res))


def run(workdirs: list[str], out: str | Path, names: list[str] | None = None, *,
        trust_code: bool = False) -> dict:
  workdirs = [Path(w) for w in workdirs]
  names = names or [w.name for w in workdirs]
  if len(names) != len(workdirs):
    raise ValueError(f'{len(names)} names for {len(workdirs)} workdirs')
  mesh = distributed.make_mesh()
  split, ref_users = None, None
  results = {}
  for wd, name in zip(workdirs, names):
    s, _ = load_split(load_config(wd).data)
    if split is None:
      split, ref_users = s, s.test_user_ids
    elif not np.array_equal(s.test_user_ids, ref_users):
      raise ValueError(f'{wd} was trained on another split than {workdirs[0]}')
    results.update(evaluate_workdir(wd, name, split, mesh, trust_code))
  counts = fold_in_counts(split.test_tr)
  tables = {k: breakdown(r, counts) for k, r in results.items()}
  overall = {k: r.summary() for k, r in results.items()}
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'activity.json').write_text(json.dumps({'tables': tables, 'overall': overall},
                                                indent=2))
  table = markdown_table(tables)
  (out / 'activity.md').write_text(table + '\n')
  try:
    plots.activity_bars(tables, out / 'activity.png')
  except plots.MissingMatplotlib as e:
    log.warning('%s', e)
  return {'tables': tables, 'overall': overall, 'markdown': table}


def main(argv):
  from absl import app, flags
  from vaecf import console
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  console.setup()
  f = flags.FLAGS
  print(run(f.workdirs, f.out, f.names, trust_code=f.trust_code)['markdown'])


def cli():
  """Console script entry point (vaecf-activity)."""
  from absl import flags
  flags.DEFINE_list('workdirs', None, 'Finished run or sweep directories.')
  flags.DEFINE_string('out', None, 'Where to write the table and the plot.')
  flags.DEFINE_list('names', None, 'Labels for the runs, in order (default: folder names).')
  flags.DEFINE_bool('trust_code', False, 'Import experiment model modules named in the '
                    'workdirs\' config.json (runs their code).')
  flags.mark_flags_as_required(['workdirs', 'out'])
  from vaecf import console
  console.cli(main, __name__)


if __name__ == '__main__':
  cli()
