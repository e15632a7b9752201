"""The one training loop, for a single run (vaecf.train) and a vmapped sweep (vaecf.sweep).

`run(config, wd, trainee)` owns what both share: resuming from the latest checkpoint
(with the metrics log cut back to it), the epochs, the stop on a non-finite loss, the
validation cadence, the best epoch of each model by validation NDCG@100, early stopping,
the checkpoints, and the final test, written once. A `Trainee` supplies what differs: one
model, or M models on a leading axis of every parameter, optimizer and model state.

Early stopping is per model: a model whose best validation pass is `train.patience` epochs
old stops training (its state is kept as it is) while the others go on, and the run ends
when every model has stopped. So model m of a sweep stops where its single run would, and
the epochs after it cost the sweep nothing.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from vaecf import checkpoints, console, input_pipeline
from vaecf.common import VaecfError
from vaecf.data.types import Split
from vaecf.evaluate import EvalResult

log = logging.getLogger(__name__)
BEST = checkpoints.BEST_METRIC


class TrainingDiverged(VaecfError, FloatingPointError):
  """The loss became NaN/Inf; checkpoints saved before it are left intact."""


class Trainee(Protocol):
  """What the loop trains; `labels` has one dict per model (the fields its rows carry).

  `active[i]` is False for a model that has stopped: train_epoch leaves its state as it is
  and gives None for its metrics, validate may give None for its result. `best` entries
  passed to `results` carry 'stopped_after' (its last trained epoch) for a model that
  stopped early.
  """
  labels: list[dict[str, Any]]
  passes: int  # shuffled passes over the training users per epoch

  def init(self) -> Any: ...
  def train_epoch(self, carry, epoch: int, active: list[bool]
                  ) -> tuple[Any, list[dict[str, float] | None]]: ...
  def validate(self, carry, active: list[bool]) -> list[EvalResult | None]: ...
  def keep_best(self, carry, improved: list[bool]) -> Any: ...
  def save(self, mngr, epoch: int, carry, record: dict, val: float | None) -> None: ...
  def best_of_record(self, record: dict) -> list[dict]: ...
  def test(self, mngr, carry, best: list[dict]) -> list[EvalResult]: ...
  def epoch_line(self, rows: list[dict | None], best: list[dict], eta: float) -> str: ...
  def results(self, best: list[dict], tests: list[EvalResult], seconds: float) -> dict: ...


# -- epochs -------------------------------------------------------------------------------

def run_epoch(step_fn, state, hparams, split: Split, config, mesh, epoch: int, *,
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
    state, m = step_fn(state, batch, hparams)
    history.append(m)
    if bar.due():
      jax.block_until_ready(m)
      bar.update(i, min(i * b, n_train))
  bar.close()
  return state, history


def run_phases(model, phase_steps: dict, after_fns: dict, state, hparams, split: Split,
               config, mesh, epoch: int):
  """One epoch of a model's phases, in order: each phase's passes (pass k of the epoch
  shuffled on (seed, epoch, k)), then its `after` hook. Returns (state, {phase: history})."""
  histories, k = {}, 0
  multi = len(model.phases) > 1 or model.phases[0].passes > 1
  for phase in model.phases:
    histories[phase.name] = []
    for j in range(phase.passes):
      label = f' {phase.name} {j + 1}/{phase.passes}' if multi else ''
      state, h = run_epoch(phase_steps[phase.name], state, hparams, split, config, mesh, epoch,
                           pass_index=k, label=label)
      histories[phase.name] += h
      k += 1
    if phase.name in after_fns:
      state = after_fns[phase.name](state)
  return state, histories


def _means(history: list[dict], n_models: int | None) -> list[dict[str, float]]:
  """Per-model means over an epoch's steps (beta: its last value); one host transfer."""
  if not history:
    return [{} for _ in range(n_models or 1)]
  stacked = jax.device_get(jax.tree.map(lambda *v: jnp.stack(v), *history))
  if n_models is None:
    stacked = {k: v[:, None] for k, v in stacked.items()}
  out = []
  for m in range(stacked['loss'].shape[1]):
    row = {k: float(np.mean(v[:, m])) for k, v in stacked.items() if k not in ('beta', 'users')}
    row['beta'] = float(stacked['beta'][-1, m])
    out.append(row)
  return out


def epoch_metrics(model, histories: dict, n_models: int | None = None) -> list[dict]:
  """Each model's host means of the epoch's metrics: the first phase's as loss, kl, ...;
  with several phases also each phase's as <phase>_loss, <phase>_kl, ..."""
  per = {name: _means(h, n_models) for name, h in histories.items()}
  out = [dict(m) for m in per[model.phases[0].name]]
  if len(per) > 1:
    for name, ms in per.items():
      for row, m in zip(out, ms):
        row.update({f'{name}_{k}': v for k, v in m.items() if k != 'beta'})
  return out


# -- the loop -----------------------------------------------------------------------------

def _stopped(b: dict, epoch: int, patience: int) -> bool:
  """Early stopping of one model after `epoch`: its best validation pass is `patience`
  epochs old."""
  return bool(patience) and b['epoch'] > 0 and epoch - b['epoch'] >= patience


def _stale(best: list[dict], epoch: int, patience: int) -> bool:
  """The run's end: every model has stopped."""
  return all(_stopped(b, epoch, patience) for b in best)


def run(config, wd, split: Split, step_of, trainee: Trainee, *,
        stop_after_epoch: int | None = None, results_file: str = 'results.json',
        score_test: bool = True) -> dict:
  """Trains (or resumes) `trainee` in workdir `wd`; returns and writes the results.

  step_of(carry) -> the global step. `stop_after_epoch` ends early without the final
  test, as a kill would (tests of resumption). `score_test=False` leaves the test users
  unscored (a tuner's rounds, which must choose on validation alone).
  """
  mngr = checkpoints.manager(wd.path, config.train.keep_latest)
  carry = trainee.init()
  n = len(trainee.labels)
  start_epoch, best = 1, [{'epoch': 0, 'step': 0, BEST: -math.inf} for _ in range(n)]
  latest = mngr.latest_step()
  if latest is None:
    wd.truncate_metrics(0)  # a kill before the first checkpoint: its rows are not resumed
  else:
    carry, record = checkpoints.restore(mngr, latest, checkpoints.abstract_of(carry))
    start_epoch, best = record['epoch'] + 1, trainee.best_of_record(record)
    wd.truncate_metrics(record['epoch'])
    log.info('resumed from epoch %d (step %d) in %s', record['epoch'], record['step'], wd.path)

  t, n_train = config.train, split.train.shape[0]
  epoch_times, stopped_at, was_active = [], None, [True] * n
  for epoch in range(start_epoch, t.epochs + 1):
    if _stale(best, epoch - 1, t.patience):
      stopped_at = epoch - 1
      break
    active = [not _stopped(b, epoch - 1, t.patience) for b in best]
    for i in range(n):
      if was_active[i] and not active[i]:
        log.info('model %s stopped after epoch %d: no validation gain in %d epochs '
                 '(train.patience); the others go on', trainee.labels[i],
                 best[i]['epoch'] + t.patience, t.patience)
    was_active = active
    t0 = time.perf_counter()
    carry, trains = trainee.train_epoch(carry, epoch, active)
    t_train = time.perf_counter() - t0
    step = int(jax.device_get(step_of(carry)))
    bad = [i for i, m in enumerate(trains)
           if m is not None and not all(math.isfinite(v) for v in m.values())]
    if bad:
      which = '' if n == 1 else f' for models {[trainee.labels[i] for i in bad]}'
      raise TrainingDiverged(
          f'non-finite training loss at epoch {epoch} (step {step}){which}: '
          f'{trains[bad[0]]}. Checkpoints up to epoch {epoch - 1} in '
          f'{wd.path / "checkpoints"} are intact; lower train.learning_rate or check the '
          'input data.')
    n_active = sum(active)
    rows = [None if m is None else
            {'epoch': epoch, 'step': step, **label,
             **{f'train_{k}': v for k, v in m.items() if k != 'beta'}, 'beta': m['beta'],
             'users_per_s': n_train * trainee.passes * n_active / t_train,
             'train_seconds': t_train}
            for label, m in zip(trainee.labels, trains)]
    val = None
    if epoch % t.eval_every == 0 or epoch == t.epochs:
      t1 = time.perf_counter()
      results = trainee.validate(carry, active)
      t_eval = time.perf_counter() - t1
      improved = [False] * n
      for i, (row, res) in enumerate(zip(rows, results)):
        if row is None:
          continue
        row.update({f'val_{k}': v for k, v in res.summary().items()}, eval_seconds=t_eval)
        improved[i] = row[BEST] > best[i][BEST]
        if improved[i]:
          best[i] = {'epoch': epoch, 'step': step, BEST: row[BEST]}
      carry = trainee.keep_best(carry, improved)
      val = next(r for r in rows if r is not None)[BEST]
    trainee.save(mngr, epoch, carry, {'epoch': epoch, 'step': step, 'best': best}, val)
    seconds = time.perf_counter() - t0
    for row in rows:
      if row is not None:  # a stopped model's rows end where its single run's would
        row['seconds'] = seconds
        wd.log_epoch(row)
    epoch_times.append(seconds)
    log.info('%s', trainee.epoch_line(rows, best, np.mean(epoch_times[-5:]) *
                                      (t.epochs - epoch)))
    if stop_after_epoch is not None and epoch >= stop_after_epoch:
      mngr.wait_until_finished()
      return {}
  mngr.wait_until_finished()
  if any(b['epoch'] == 0 for b in best):
    raise RuntimeError('no validation pass ran: nothing to select the best epoch from')
  if stopped_at is not None:
    log.info('early stop after epoch %d: no validation gain in %d epochs (train.patience)',
             stopped_at, t.patience)
  last = stopped_at or t.epochs
  best = [{**b, 'stopped_after': b['epoch'] + t.patience}
          if _stopped(b, last, t.patience) and b['epoch'] + t.patience < t.epochs else b
          for b in best]
  t1 = time.perf_counter()
  tests = trainee.test(mngr, carry, best) if score_test else [None] * n
  results = trainee.results(best, tests, time.perf_counter() - t1)
  if stopped_at is not None:
    results['stopped_early_at'] = stopped_at
  wd.write_results(results, results_file)
  return results

