"""NDCG@100 of test users by activity quintile, for every model of some workdirs.

  python -m experiments.activity --workdirs=/tmp/runs/ml1m-multvae,/tmp/runs/ml1m-multdae \
      --out=DIR [--names=Mult-VAE,Mult-DAE]

Each workdir is a finished run of vaecf.main (its best checkpoint is restored), a
saved baseline (anything `vaecf.Recommender.from_workdir` loads) or a sweep of
experiments.sweep_beta (every model's best parameters). All must share one split. Writes DIR/activity.json, DIR/activity.md and DIR/activity.png.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from absl import app, flags, logging as absl_logging

from vaecf import activity, evaluate as evaluation, models, plots, steps, sweep, train
from vaecf.data import load_split
from vaecf.recommend import Recommender
from vaecf.workdir import load_config

flags.DEFINE_list('workdirs', None, 'Finished run or sweep directories.')
flags.DEFINE_string('out', None, 'Where to write the table and the plot.')
flags.DEFINE_list('names', None, 'Labels for the runs, in order (default: folder names).')
flags.mark_flags_as_required(['workdirs', 'out'])
FLAGS = flags.FLAGS


def evaluate_workdir(workdir: Path, name: str, split, mesh) -> dict:
  """{label: EvalResult on the test users} for the run, or each model of a sweep."""
  if (workdir / 'sweep.json').exists():
    config = load_config(workdir)
    train.import_model_module(config)
    model = models.build(config, split.n_items)
    summary = json.loads((workdir / 'sweep.json').read_text())
    params_M = sweep.restore_best_params(workdir, config, split.n_items, mesh)
    for_params, batch = sweep.make_sweep_scorer(model, mesh, config.train.eval_batch_size)
    res = sweep.evaluate_models(for_params(params_M), *split.heldout('test'),
                                batch_size=batch)
    expected = [m['test'] for m in summary['models']]
    labels = [f'{name} [{summary["mode"]}={v:g}]' for v in summary['values']]
  else:
    rec = Recommender.from_workdir(workdir)  # best checkpoint, or a saved baseline
    res = [evaluation.evaluate(rec.score_fn, *split.heldout('test'), batch_size=rec.batch_size)]
    saved = workdir / 'results.json'
    expected = [json.loads(saved.read_text()).get('test', {}) if saved.exists() else {}]
    labels = [name]
  for label, r, want in zip(labels, res, expected):
    if activity.METRIC in want and abs(r.mean(activity.METRIC) - want[activity.METRIC]) > 1e-4:
      logging.warning('%s: test ndcg@100 %.5f differs from the run\'s own %.5f', label,
                      r.mean(activity.METRIC), want[activity.METRIC])
  return dict(zip(labels, res))


def run(workdirs: list[str], out: str | Path, names: list[str] | None = None) -> dict:
  workdirs = [Path(w) for w in workdirs]
  names = names or [w.name for w in workdirs]
  if len(names) != len(workdirs):
    raise ValueError(f'{len(names)} names for {len(workdirs)} workdirs')
  mesh = steps.make_mesh()
  split, ref_users = None, None
  results = {}
  for wd, name in zip(workdirs, names):
    s, _ = load_split(load_config(wd).data)
    if split is None:
      split, ref_users = s, s.test_user_ids
    elif not np.array_equal(s.test_user_ids, ref_users):
      raise ValueError(f'{wd} was trained on another split than {workdirs[0]}')
    results.update(evaluate_workdir(wd, name, split, mesh))
  counts = activity.fold_in_counts(split.test_tr)
  tables = {k: activity.breakdown(r, counts) for k, r in results.items()}
  overall = {k: r.summary() for k, r in results.items()}
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'activity.json').write_text(json.dumps({'tables': tables, 'overall': overall},
                                                indent=2))
  table = activity.markdown_table(tables)
  (out / 'activity.md').write_text(table + '\n')
  try:
    plots.activity_bars(tables, out / 'activity.png')
  except plots.MissingMatplotlib as e:
    logging.warning('%s', e)
  return {'tables': tables, 'overall': overall, 'markdown': table}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # orbax logs every save at INFO; its warnings still show.
  absl_logging.get_absl_logger().addFilter(
      lambda r: r.levelno >= logging.WARNING or 'orbax' not in r.pathname)
  print(run(FLAGS.workdirs, FLAGS.out, FLAGS.names)['markdown'])


if __name__ == '__main__':
  app.run(main)
