"""The paper's procedure for choosing beta, automated.

  vaecf-select-beta --config=configs/multvae.py:ml-1m --config.data.path=PATH/ml-1m \
      --workdir=DIR   (= python -m vaecf.tools.select_beta)

1. DIR/anneal: beta annealed linearly from 0 to 1 over the whole run
   (train.anneal_cap=1, train.total_anneal_steps = epochs * steps per epoch).
2. The beta at the epoch of best validation NDCG@100 (eval.select) becomes the cap.
3. DIR/retrain: the same run with that cap. Beta rises with the same slope as in
   step 1 and stays at the cap from the epoch where it was found best on.
Writes DIR/select_beta.json: the choice, the retrained model's test metrics and the
validation curve; the plots are DIR/anneal_val_ndcg_epoch.png and _beta.png.
Both runs resume after a kill (rerun the same command).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from vaecf import checkpoints, console, train
from vaecf.tools import plots
from vaecf.data import load_split
from vaecf.workdir import read_metrics

log = logging.getLogger(__name__)

FLAGS = flags.FLAGS


def best_row(rows: list[dict], metric: str = checkpoints.BEST_METRIC) -> dict:
  """The epoch row with the highest validation metric (the first of ties)."""
  scored = [r for r in rows if r.get(metric) is not None]
  if not scored:
    raise ValueError(f'no row holds {metric!r}: no validation pass ran')
  return max(scored, key=lambda r: r[metric])


def annealing_config(config, n_train: int):
  """beta = step / total_steps up to 1 at the run's last step."""
  c = config.copy_and_resolve_references()
  c.train.anneal_cap = 1.0
  c.train.constant_beta = None
  c.train.total_anneal_steps = config.train.epochs * math.ceil(n_train /
                                                               config.train.batch_size)
  return c


def run(config, workdir: str | Path, *, split=None) -> dict:
  workdir = Path(workdir)
  if split is None:
    split, _ = load_split(config.data)
  anneal_cfg = annealing_config(config, split.train.shape[0])
  anneal = train.train_and_evaluate(anneal_cfg, workdir / 'anneal', split=split)
  curve = read_metrics(workdir / 'anneal')
  key = checkpoints.best_key(config.eval.select)  # the paper's: validation NDCG@100
  chosen = best_row(curve, key)
  log.info('selected beta %.4f (epoch %d, val %s %.4f)', chosen['beta'], chosen['epoch'],
           config.eval.select, chosen[key])
  retrain_cfg = anneal_cfg.copy_and_resolve_references()
  retrain_cfg.train.anneal_cap = float(chosen['beta'])
  retrain = train.train_and_evaluate(retrain_cfg, workdir / 'retrain', split=split)
  out = {
      'select': config.eval.select,
      'selected_beta': chosen['beta'], 'selected_epoch': chosen['epoch'],
      f'anneal_{key}': chosen[key],
      'total_anneal_steps': anneal_cfg.train.total_anneal_steps,
      'anneal_test': anneal['test'],
      'retrain_best_epoch': retrain['best_epoch'],
      f'retrain_{key}': retrain[key],
      'test': retrain['test'], 'n_test_users': retrain['n_test_users'],
      'curve': [{k: r.get(k) for k in ('epoch', 'step', 'beta', key)} for r in curve],
  }
  (workdir / 'select_beta.json').write_text(json.dumps(out, indent=2))
  _plot(workdir, curve, read_metrics(workdir / 'retrain'), chosen, key)
  return out


def _plot(workdir: Path, curve, retrain_curve, chosen, key: str) -> None:
  try:
    label = 'beta annealed 0 -> 1'
    plots.validation_vs(curve, workdir / 'anneal_val_ndcg_epoch.png', x='epoch', mark=chosen,
                        extra={f'retrained, cap {chosen["beta"]:.3f}': retrain_curve},
                        label=label, title='Selecting beta', metric=key)
    plots.validation_vs(curve, workdir / 'anneal_val_ndcg_beta.png', x='beta', mark=chosen,
                        label=label, title='Selecting beta', metric=key)
  except plots.MissingMatplotlib as e:
    log.warning('%s', e)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  console.setup()
  out = run(FLAGS.config, FLAGS.workdir)
  print(json.dumps({k: v for k, v in out.items() if k != 'curve'}, indent=2))


def cli():
  """Console script entry point (vaecf-select-beta); the flags exist only when the command runs."""
  flags.DEFINE_string('workdir', None, 'Directory for both runs and the report.')
  config_flags.DEFINE_config_file('config', None, 'A config file from configs/.',
                                  lock_config=True)
  flags.mark_flags_as_required(['config', 'workdir'])
  console.cli(main, __name__)


if __name__ == '__main__':
  cli()
