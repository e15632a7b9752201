"""`train_and_evaluate(config, workdir)`: the one trainer every model goes through.

Trains on the training users, selects the epoch with the best validation
`config.eval.select` (NDCG@100 by default), checkpoints (latest + best), resumes after a
kill, and reports the test metrics (`config.eval.metrics`) of the best checkpoint
(docs/protocol.md).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Sequence

import jax

from vaecf import checkpoints, console, distributed, evaluate as evaluation, loop, models, steps
from vaecf.config import validate
from vaecf.data import load_split
from vaecf.data.types import Split
from vaecf.loop import TrainingDiverged  # noqa: F401  (raised by the loop; kept importable here)
from vaecf.workdir import Workdir

log = logging.getLogger(__name__)


def import_model_module(config) -> None:
  """Imports `config.model.module` so a user's model can register itself
  (vaecf.models.import_module: the current directory is searched too, and the modules
  of models that moved into vaecf.models name the installed ones)."""
  models.import_module(config.model.module)


def evaluate_params(for_params, batch: int, params, split: Split, which: str,
                    metrics: Sequence[str] | None = None):
  """`params` scored on the 'val' or 'test' users; `metrics` (config.eval.metrics) or
  the evaluator's default."""
  fold_in, targets = split.heldout(which)
  return evaluation.evaluate(for_params(params), fold_in, targets, batch_size=batch,
                             **({} if metrics is None else {'metrics': tuple(metrics)}))


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


def _epoch_line(model, epochs: int, select: str, row: dict, best: dict, eta: float) -> str:
  key = checkpoints.best_key(select)
  val = row.get(key)
  val_txt = (f'val {select} {val:.4f} (best {best[key]:.4f} @ {best["epoch"]})'
             if val is not None else 'no eval')
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
    trainee = _Single(config, split, mesh, model, optimizer, init_key)
    return loop.run(wd, split, trainee, loop.Plan.from_config(config),
                    stop_after_epoch=stop_after_epoch)
  finally:
    wd.close()


class _Single:
  """The loop's trainee for one model (vaecf.loop's protocol): the carry is the train
  state; the best epoch's checkpoint is kept on disk and restored for the test."""

  def __init__(self, config, split, mesh, model, optimizer, init_key):
    self.config, self.split, self.mesh, self.model = config, split, mesh, model
    self.optimizer, self.init_key = optimizer, init_key
    self.select, self.metrics = config.eval.select, tuple(config.eval.metrics)
    self.key = checkpoints.best_key(self.select)
    self.labels, self.phases = [{}], model.phases
    hparams = steps.hparams_from_config(config, model)
    # Partials, not closures: device-resident data (vaecf.device_data) scans the jitted
    # step itself, with the hyperparameters traced.
    self.phase_steps = {
        name: functools.partial(fn, sched=hparams)
        for name, fn in steps.make_phase_steps(model, optimizer, mesh, config.train.seed).items()}
    self.after_fns = {p.name: steps.make_after_fn(p) for p in model.phases
                      if p.after is not None}
    self.for_params, self.eval_batch = steps.make_scorer(model, mesh,
                                                         config.train.eval_batch_size)

  def init(self):
    return jax.jit(lambda k: steps.init_state(self.model, self.optimizer, k),
                   out_shardings=distributed.replicated(self.mesh))(self.init_key)

  def step_of(self, state):
    return state['step']

  # One model: the loop ends when it stops, so it is always the one active model.
  def take(self, state, active):
    return state

  def put(self, state, new, active):
    return new

  def steps(self, active):
    return self.phase_steps

  def _evaluate(self, params, which):
    return evaluate_params(self.for_params, self.eval_batch, params, self.split, which,
                           self.metrics)

  def validate(self, state, active):
    return [self._evaluate(state['params'], 'val')]

  def keep_best(self, state, improved):
    return state  # the best epoch's checkpoint is the copy

  def save(self, mngr, epoch, state, record, val):
    checkpoints.save(mngr, epoch, state, {**record, 'best': record['best'][0]}, val, self.key)

  def best_of_record(self, record):
    return [record['best']]

  def test(self, mngr, state, best):
    best_state, _ = checkpoints.restore(mngr, best[0]['epoch'], checkpoints.abstract_of(state))
    return [self._evaluate(best_state['params'], 'test')]

  def epoch_line(self, rows, best, eta):
    return _epoch_line(self.model, self.config.train.epochs, self.select, rows[0], best[0],
                       eta)

  def results(self, best, tests, seconds):
    (b,), (test,) = best, tests
    log.info('%s', console.results_table(
        test.summary(), f'test, best epoch {b["epoch"]} (val {self.select} '
        f'{b[self.key]:.4f}), {test.n_users} users:'))
    return {
        'model': self.config.model.name, 'dataset': self.config.data.name,
        'best_epoch': b['epoch'], 'best_step': b['step'],
        self.key: b[self.key], 'select': self.select,
        'test': test.summary(), 'n_test_users': test.n_users, 'test_eval_seconds': seconds,
        'devices': self.mesh.devices.size, 'platform': jax.devices()[0].platform,
    }
