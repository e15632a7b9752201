"""PNG plots of a workdir's metrics, a beta sweep and the user-activity breakdown.

  python -m vaecf.tools.plots --workdir=DIR [--out=DIR2]   (or vaecf-plot)

The command reads DIR/metrics.jsonl (a single run or a sweep) and DIR/sweep.json when
present, and writes PNGs (validation NDCG@100 against epoch and beta, a sweep's
summary); it works on a run still in progress.

matplotlib is optional (`pip install 'vaecf[plot]'`) and imported only when a plot
is drawn. Figures are built with `matplotlib.figure.Figure`, never pyplot, so no
backend or global state is touched.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from vaecf.workdir import GROUPS_FILE, read_metrics

NDCG = 'ndcg@100'
SWEEP_LABELS = {'cap': 'beta cap', 'constant': 'constant beta',
                'anneal_steps': 'total anneal steps'}


class MissingMatplotlib(ImportError):
  """Plots were asked for but matplotlib is not installed."""


def _figure(width: float = 5.0, height: float = 3.4):
  try:
    from matplotlib.figure import Figure
  except ImportError as e:
    raise MissingMatplotlib("plots need matplotlib: pip install 'vaecf[plot]' "
                            "(or pip install matplotlib)") from e
  fig = Figure(figsize=(width, height), dpi=100, layout='constrained')
  return fig, fig.add_subplot()


def _save(fig, path: Path) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  return path


def _by_model(rows: list[dict]) -> dict[str, list[dict]]:
  """Rows grouped per model of a sweep (by its setting), or one group for a single run."""
  groups = defaultdict(list)
  for r in rows:
    groups[f'{r["sweep_value"]:g}' if 'model' in r else ''].append(r)
  return dict(groups)


def validation_vs(rows: list[dict], path: str | Path, *, x: str = 'epoch',
                  metric: str = 'val_' + NDCG, mark: dict | None = None,
                  extra: dict[str, list[dict]] | None = None, title: str = '',
                  label: str = 'run') -> Path:
  """Validation metric against `x` ('epoch' or 'beta'), one line per model."""
  fig, ax = _figure()
  lines = {k or label: v for k, v in _by_model(rows).items()}
  lines.update(extra or {})
  for name, group in lines.items():
    pts = [(r[x], r[metric]) for r in group if r.get(metric) is not None]
    if pts:
      ax.plot(*zip(*pts), label=name, lw=1.2)
  if mark is not None:
    ax.plot([mark[x]], [mark[metric]], 'o', color='k', ms=5,
            label=f'best: epoch {mark["epoch"]}, beta {mark["beta"]:.3f}')
  ax.set_xlabel(x)
  ax.set_ylabel(metric.replace('_', ' '))
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  if len(lines) > 1 or mark is not None:
    ax.legend(fontsize=7, title='' if 'model' not in rows[0] else 'sweep value',
              title_fontsize=8)
  return _save(fig, path)


def sweep_summary(results: dict, path: str | Path, metric: str = NDCG) -> Path:
  """Best validation and test `metric` (the sweep's selection) of each sweep model against
  its setting."""
  fig, ax = _figure()
  ms = sorted(results['models'], key=lambda m: m['value'])
  xs = [m['value'] for m in ms]
  ax.plot(xs, [m['val_' + metric] for m in ms], 'o-', label='validation (best epoch)')
  ax.errorbar(xs, [m['test'][metric] for m in ms],
              yerr=[m['test'].get(metric + '_se', 0.0) for m in ms],
              fmt='s-', capsize=3, label='test (+- s.e.)')
  ax.set_xlabel(SWEEP_LABELS.get(results.get('mode'), 'sweep value'))
  ax.set_ylabel(metric)
  ax.set_title(f'{results.get("model", "")} on {results.get("dataset", "")}', fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def activity_bars(tables: dict[str, Sequence[dict]], path: str | Path,
                  metric: str = NDCG) -> Path:
  """Grouped bars: the metric per activity group (x) for each model (colour)."""
  fig, ax = _figure(6.0, 3.4)
  names = list(tables)
  width = 0.8 / max(len(names), 1)
  for j, name in enumerate(names):
    groups = tables[name]
    xs = [g['group'] + (j - (len(names) - 1) / 2) * width for g in groups]
    ax.bar(xs, [g[metric] for g in groups], width, yerr=[g[metric + '_se'] for g in groups],
           capsize=2, label=name)
  first = tables[names[0]] if names else []
  ax.set_xticks([g['group'] for g in first],
                [f'Q{g["group"] + 1}\n{g["min_items"]}-{g["max_items"]}' for g in first])
  ax.set_xlabel('fold-in items per test user (activity quintile)')
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3, axis='y')
  ax.legend(fontsize=8)
  return _save(fig, path)


def refuse_groups(workdir: Path) -> None:
  """A sweep grouped by shape (vaecf.sweep_groups) is a folder of sweeps, not one."""
  if (workdir / GROUPS_FILE).exists():
    names = sorted(p.name for p in workdir.iterdir() if (p / 'config.json').exists())
    raise ValueError(f'{workdir} holds a sweep grouped by shape; open one of its groups: '
                     f'{names}')


def selection_of(workdir: Path) -> str:
  """The metric that chose the run's epochs (config.json's eval.select; NDCG@100 for runs
  made before it was a setting)."""
  cfg = workdir / 'config.json'
  saved = json.loads(cfg.read_text()) if cfg.exists() else {}
  return saved.get('eval', {}).get('select', NDCG)


def plot_workdir(workdir: str | Path, out: str | Path | None = None) -> list[Path]:
  """Every plot a workdir's files allow; returns the PNG paths written."""
  workdir = Path(workdir)
  out = workdir if out is None else Path(out)
  refuse_groups(workdir)
  rows = read_metrics(workdir)
  if not rows:
    raise ValueError(f'{workdir / "metrics.jsonl"} holds no rows yet')
  select = selection_of(workdir)
  written = [validation_vs(rows, out / 'val_ndcg_epoch.png', title=workdir.name,
                           metric='val_' + select)]
  if len({round(r['beta'], 6) for r in rows}) > 1:
    written.append(validation_vs(rows, out / 'val_ndcg_beta.png', x='beta',
                                 title=workdir.name, metric='val_' + select))
  if (workdir / 'sweep.json').exists():
    written.append(sweep_summary(json.loads((workdir / 'sweep.json').read_text()),
                                 out / 'sweep_ndcg.png', select))
  return written


def main(argv):
  from absl import app, flags
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  try:
    for path in plot_workdir(f.workdir, f.out):
      print(path)
  except MissingMatplotlib as e:
    raise app.UsageError(str(e)) from e


def cli():
  """Console script entry point (vaecf-plot)."""
  from absl import flags
  flags.DEFINE_string('workdir', None, 'A run or sweep directory holding metrics.jsonl.')
  flags.DEFINE_string('out', None, 'Where to write the PNGs (default: the workdir).')
  flags.mark_flag_as_required('workdir')
  from vaecf import console
  console.cli(main, __name__)


if __name__ == '__main__':
  cli()
