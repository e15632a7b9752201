"""`train_and_evaluate(config, workdir)`: the one trainer every model goes through.

Trains on the training users, selects the epoch with the best validation
NDCG@100, checkpoints (latest + best), resumes after a kill, and reports the
test metrics of the best checkpoint (docs/protocol.md).
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import jax

from vaecf import checkpoints, console, distributed, evaluate as evaluation, loop, models, steps
from vaecf.config import validate
from vaecf.data import load_split
from vaecf.data.types import Split
from vaecf.loop import TrainingDiverged  # noqa: F401  (raised by the loop; kept importable here)
from vaecf.workdir import Workdir

log = logging.getLogger(__name__)


def import_model_module(config) -> None:
  """Imports `config.model.module` so an experiment can register its model.

  The name is resolved as usual and then against the current directory, so
  `experiments.x` works from a checkout whether vaecf runs as `python -m` or
  through an installed console script (which does not put the directory on the path).
  """
  name = config.model.module
  if not name:
    return
  try:
    importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name != name.split('.')[0] or os.getcwd() in sys.path:
      raise
    sys.path.insert(0, os.getcwd())
    importlib.import_module(name)


def evaluate_params(for_params, batch: int, params, split: Split, which: str):
  fold_in, targets = split.heldout(which)
  return evaluation.evaluate(for_params(params), fold_in, targets, batch_size=batch)


def setup(config, workdir: str | Path, split: Split | None = None, check=None):
  """What every trainer starts from: (workdir, split, mesh, model, optimizer, init key).

  The config is validated, the model built and `check(model)` run (a caller's own
  refusals), and the workdir checked and locked, before anything is written; the caller
  closes `workdir` (its lock) when the run ends.
  """
  validate(config)
  import_model_module(config)
  wd = Workdir(workdir)
  if split is None:
    split, info = load_split(config.data)
  else:
    info = {'name': config.data.name}
  model = models.build(config, split.n_items)
  if check is not None:
    check(model)  # a caller's own refusal (the sweep's knobs), before anything is written
  wd.start(config, split, info)
  init_key = jax.random.fold_in(jax.random.key(config.train.seed), 0)
  return wd, split, distributed.make_mesh(), model, steps.make_optimizer(config), init_key


def _epoch_line(model, epochs: int, row: dict, best: dict, eta: float) -> str:
  val = row.get(checkpoints.BEST_METRIC)
  val_txt = (f'val ndcg@100 {val:.4f} (best {best[checkpoints.BEST_METRIC]:.4f} @ '
             f'{best["epoch"]})' if val is not None else 'no eval')
  kl_txt = (f" kl {row.get('train_kl', 0.0):.2f} beta {row['beta']:.4f}"
            if model.uses_beta else '')
  return (f'epoch {row["epoch"]}/{epochs} step {row["step"]} | loss {row["train_loss"]:.2f}'
          f'{kl_txt} | {val_txt} | {row["users_per_s"]:.0f} users/s '
          f'{row["seconds"]:.1f}s/epoch | ETA {console.fmt_time(eta)}')


def train_and_evaluate(config, workdir: str | Path, *, split: Split | None = None,
                       stop_after_epoch: int | None = None) -> dict:
  """Runs (or resumes) training in `workdir`; returns the results dict.

  `stop_after_epoch` ends the run early without final evaluation, as a kill would
  (used by tests of resumption).
  """
  wd, split, mesh, model, optimizer, init_key = setup(config, workdir, split)
  try:
    return _train(config, wd, split, mesh, model, optimizer, init_key, stop_after_epoch)
  finally:
    wd.close()


class _Single:
  """The loop's trainee for one model: the checkpoint holds the train state; the best
  epoch's checkpoint is kept on disk and restored for the test."""

  def __init__(self, config, split, mesh, model, optimizer, init_key):
    self.config, self.split, self.mesh, self.model = config, split, mesh, model
    self.optimizer, self.init_key = optimizer, init_key
    self.labels, self.passes = [{}], sum(p.passes for p in model.phases)
    self.phase_steps = steps.make_phase_steps(model, optimizer, mesh, config.train.seed)
    self.after_fns = {p.name: steps.make_after_fn(p) for p in model.phases
                      if p.after is not None}
    self.hparams = steps.hparams_from_config(config, model)
    self.for_params, self.eval_batch = steps.make_scorer(model, mesh,
                                                         config.train.eval_batch_size)

  def init(self):
    return jax.jit(lambda k: steps.init_state(self.model, self.optimizer, k),
                   out_shardings=distributed.replicated(self.mesh))(self.init_key)

  def train_epoch(self, state, epoch, active):
    del active  # one model: the loop ends when it stops
    state, histories = loop.run_phases(self.model, self.phase_steps, self.after_fns, state,
                                       self.hparams, self.split, self.config, self.mesh, epoch)
    return state, loop.epoch_metrics(self.model, histories)

  def validate(self, state, active):
    del active
    return [evaluate_params(self.for_params, self.eval_batch, state['params'], self.split,
                            'val')]

  def keep_best(self, state, improved):
    return state  # the best epoch's checkpoint is the copy

  def save(self, mngr, epoch, state, record, val):
    checkpoints.save(mngr, epoch, state, {**record, 'best': record['best'][0]}, val)

  def best_of_record(self, record):
    return [record['best']]

  def test(self, mngr, state, best):
    best_state, _ = checkpoints.restore(mngr, best[0]['epoch'], checkpoints.abstract_of(state))
    return [evaluate_params(self.for_params, self.eval_batch, best_state['params'],
                            self.split, 'test')]

  def epoch_line(self, rows, best, eta):
    return _epoch_line(self.model, self.config.train.epochs, rows[0], best[0], eta)

  def results(self, best, tests, seconds):
    (b,), (test,) = best, tests
    log.info('%s', console.results_table(
        test.summary(), f'test, best epoch {b["epoch"]} (val ndcg@100 '
        f'{b[checkpoints.BEST_METRIC]:.4f}), {test.n_users} users:'))
    return {
        'model': self.config.model.name, 'dataset': self.config.data.name,
        'best_epoch': b['epoch'], 'best_step': b['step'],
        'val_ndcg@100': b[checkpoints.BEST_METRIC],
        'test': test.summary(), 'n_test_users': test.n_users, 'test_eval_seconds': seconds,
        'devices': self.mesh.devices.size, 'platform': jax.devices()[0].platform,
    }


def _train(config, wd, split, mesh, model, optimizer, init_key, stop_after_epoch):
  trainee = _Single(config, split, mesh, model, optimizer, init_key)
  return loop.run(config, wd, split, lambda state: state['step'], trainee,
                  stop_after_epoch=stop_after_epoch)
