"""`train_and_evaluate(config, workdir)`: the one trainer every model goes through.

Trains on the training users, selects the epoch with the best validation
NDCG@100, checkpoints (latest + best), resumes after a kill, and reports the
test metrics of the best checkpoint (docs/protocol.md).
"""
from __future__ import annotations

import importlib
import logging
import math
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from vaecf import (checkpoints, console, distributed, evaluate as evaluation, input_pipeline,
                   models, steps)
from vaecf.common import VaecfError
from vaecf.config import validate
from vaecf.data import load_split
from vaecf.data.types import Split
from vaecf.workdir import Workdir

log = logging.getLogger(__name__)


class TrainingDiverged(VaecfError, FloatingPointError):
  """The loss became NaN/Inf; checkpoints saved before it are left intact."""


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


def setup(config, workdir: str | Path, split: Split | None = None):
  """What every trainer starts from: (workdir, split, mesh, model, optimizer, init key).

  The config is validated and the workdir checked (and locked) before anything is
  written; the caller closes `workdir` (its lock) when the run ends.
  """
  validate(config)
  import_model_module(config)
  wd = Workdir(workdir)
  if split is None:
    split, info = load_split(config.data)
  else:
    info = {'name': config.data.name}
  wd.start(config, split, info)
  model = models.build(config, split.n_items)
  init_key = jax.random.fold_in(jax.random.key(config.train.seed), 0)
  return wd, split, distributed.make_mesh(), model, steps.make_optimizer(config), init_key


def run_epoch(step_fn, state, sched, split: Split, config, mesh, epoch: int, *,
              progress: bool = True, pass_index: int = 0, label: str = ''):
  """One shuffled pass over the training users; per-step metrics stay on the device.

  A long epoch shows a progress line (console.Progress); checking it syncs with
  the device at most once a second, so the step pipeline stays full.
  """
  history = []
  n_train, b = split.train.shape[0], config.train.batch_size
  bar = console.Progress(f'epoch {epoch}/{config.train.epochs}{label}', -(-n_train // b),
                         enabled=progress and jax.process_index() == 0)
  for i, batch in enumerate(input_pipeline.prefetch(input_pipeline.epoch_batches(
      split.train, b, config.train.seed, epoch, mesh, pass_index)), 1):
    state, m = step_fn(state, batch, sched)
    history.append(m)
    if bar.due():
      jax.block_until_ready(m)
      bar.update(i, min(i * b, n_train))
  bar.close()
  return state, history


def run_phases(model, phase_steps: dict, after_fns: dict, state, sched, split: Split, config,
               mesh, epoch: int):
  """One epoch of a model's phases, in order: each phase's passes (pass k of the epoch
  shuffled on (seed, epoch, k)), then its `after` hook. Returns (state, {phase: history})."""
  histories, k = {}, 0
  multi = len(model.phases) > 1 or model.phases[0].passes > 1
  for phase in model.phases:
    histories[phase.name] = []
    for j in range(phase.passes):
      label = f' {phase.name} {j + 1}/{phase.passes}' if multi else ''
      state, h = run_epoch(phase_steps[phase.name], state, sched, split, config, mesh, epoch,
                           pass_index=k, label=label)
      histories[phase.name] += h
      k += 1
    if phase.name in after_fns:
      state = after_fns[phase.name](state)
  return state, histories


def epoch_metrics(model, histories: dict) -> dict[str, float]:
  """Host means of the epoch's metrics: the first phase's as loss, kl, ...; with several
  phases also each phase's as <phase>_loss, <phase>_kl, ..."""
  per = {name: steps.host_scalar_metrics(h) for name, h in histories.items()}
  out = dict(per[model.phases[0].name])
  if len(per) > 1:
    for name, m in per.items():
      out.update({f'{name}_{k}': v for k, v in m.items() if k != 'beta'})
  return out


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


def _train(config, wd, split, mesh, model, optimizer, init_key, stop_after_epoch):
  state = jax.jit(lambda k: steps.init_state(model, optimizer, k),
                  out_shardings=distributed.replicated(mesh))(init_key)
  phase_steps = steps.make_phase_steps(model, optimizer, mesh, config.train.seed)
  after_fns = {p.name: steps.make_after_fn(p) for p in model.phases if p.after is not None}
  passes = sum(p.passes for p in model.phases)
  sched = steps.schedule_from_config(config)
  for_params, eval_batch = steps.make_scorer(model, mesh, config.train.eval_batch_size)

  mngr = checkpoints.manager(wd.path, config.train.keep_latest)
  start_epoch, best = 1, {'epoch': 0, 'step': 0, checkpoints.BEST_METRIC: -math.inf}
  latest = mngr.latest_step()
  if latest is None:
    wd.truncate_metrics(0)  # a kill before the first checkpoint: its rows are not resumed
  else:
    state, record = checkpoints.restore(mngr, latest, checkpoints.abstract_of(state))
    start_epoch, best = record['epoch'] + 1, record['best']
    wd.truncate_metrics(record['epoch'])
    log.info('resumed from epoch %d (step %d) in %s', record['epoch'], record['step'],
             wd.path)

  epochs = config.train.epochs
  n_train = split.train.shape[0]
  epoch_times = []
  for epoch in range(start_epoch, epochs + 1):
    t0 = time.perf_counter()
    state, histories = run_phases(model, phase_steps, after_fns, state, sched, split, config,
                                  mesh, epoch)
    train = epoch_metrics(model, histories)
    t_train = time.perf_counter() - t0
    step = int(jax.device_get(state['step']))
    if not all(math.isfinite(v) for v in train.values()):
      raise TrainingDiverged(
          f'non-finite training loss at epoch {epoch} (step {step}): {train}. Checkpoints up '
          f'to epoch {epoch - 1} in {wd.path / "checkpoints"} are intact; lower '
          'train.learning_rate or check the input data.')
    row = {'epoch': epoch, 'step': step, **{f'train_{k}': v for k, v in train.items()
                                            if k != 'beta'}, 'beta': train['beta'],
           'users_per_s': n_train * passes / t_train, 'train_seconds': t_train}
    val_ndcg = None
    if epoch % config.train.eval_every == 0 or epoch == epochs:
      t1 = time.perf_counter()
      val = evaluate_params(for_params, eval_batch, state['params'], split, 'val')
      row.update({f'val_{k}': v for k, v in val.summary().items()})
      row['eval_seconds'] = time.perf_counter() - t1
      val_ndcg = row[checkpoints.BEST_METRIC]
      if val_ndcg > best[checkpoints.BEST_METRIC]:
        best = {'epoch': epoch, 'step': step, checkpoints.BEST_METRIC: val_ndcg}
    checkpoints.save(mngr, epoch, state, {'epoch': epoch, 'step': step, 'best': best}, val_ndcg)
    row['seconds'] = time.perf_counter() - t0
    epoch_times.append(row['seconds'])
    wd.log_epoch(row)
    log.info('%s', _epoch_line(model, epochs, row, best,
                               np.mean(epoch_times[-5:]) * (epochs - epoch)))
    if stop_after_epoch is not None and epoch >= stop_after_epoch:
      mngr.wait_until_finished()
      return {}
  mngr.wait_until_finished()
  if best['epoch'] == 0:
    raise RuntimeError('no validation pass ran: nothing to select the best epoch from')
  best_state, _ = checkpoints.restore(mngr, best['epoch'], checkpoints.abstract_of(state))
  t1 = time.perf_counter()
  test = evaluate_params(for_params, eval_batch, best_state['params'], split, 'test')
  results = {
      'model': config.model.name, 'dataset': config.data.name,
      'best_epoch': best['epoch'], 'best_step': best['step'],
      'val_ndcg@100': best[checkpoints.BEST_METRIC],
      'test': test.summary(), 'n_test_users': test.n_users,
      'test_eval_seconds': time.perf_counter() - t1,
      'devices': mesh.devices.size, 'platform': jax.devices()[0].platform,
  }
  wd.write_results(results)
  log.info('%s', console.results_table(
      test.summary(), f'test, best epoch {best["epoch"]} (val ndcg@100 '
      f'{best[checkpoints.BEST_METRIC]:.4f}), {test.n_users} users:'))
  return results
