"""The one training loop, for a single run (vaecf.train) and a vmapped sweep (vaecf.sweep).

`run(wd, split, trainee, plan)` owns what both share: resuming from the latest checkpoint
(with the metrics log cut back to it), the epochs (the model's phases in order, each
phase's shuffled passes over the training users, its `after` hook, the epoch's metric
means), the stop on a non-finite loss, the validation cadence, the best epoch of each
model by the validation metric `plan.select` (config.eval.select), early stopping, the
checkpoints, and the final test, written once. `plan` holds the few settings it reads.

A `Trainee` supplies only what differs between one model and M models on a leading axis
of every parameter, optimizer and model state. The loop keeps a `carry` it never looks
into (the train state; a sweep's also holds each model's best parameters) and asks:
  labels            one dict per model: the fields its metrics rows carry
  phases, mesh      the model's epoch (models.Phase) and where the batches go
  init()            a fresh carry;  step_of(carry): its global step
  take(carry, active) -> state       the active models' train state, what the steps take
  put(carry, state, active) -> carry that state written back (stopped models untouched)
  steps(active)     {phase name: step(state, batch) -> (state, metrics)} for those models
                    (best a functools.partial of one jitted step: device-resident data
                    scans it with the bound arguments traced, compiling it once a run)
  after_fns         {phase name: hook(state) -> state} for the phases with an `after`
  validate(carry, active) -> [EvalResult]   one per active model, on the validation users
  keep_best(carry, improved) -> carry       the models whose validation pass improved
  save(mngr, epoch, carry, record, val) / best_of_record(record) -> [best]   checkpoints
  test(mngr, carry, best) -> [EvalResult]   each model's best epoch on the test users
  epoch_line(rows, best, eta) -> str;  results(best, tests, seconds) -> dict
`active[i]` is False for a model that has stopped: it is left out of take, steps and
validate, and its metrics row is None. `best` has one {'epoch', 'step', plan.key} per
model; `results` gets 'stopped_after' (its last trained epoch) in a model's that stopped.

The batches come from the host pipeline (vaecf.input_pipeline) or, with
config.train.device_data, from the device (vaecf.device_data, its own order and blocks of
steps a dispatch); the run logs which and why, and its results say so ('input').

Early stopping is per model: a model whose best validation pass is `plan.patience`
epochs old stops training (its state is kept as it is) while the others go on, and the
run ends when every model has stopped. So model m of a sweep stops where its single run
would, and the epochs after it cost the sweep nothing. A tuner's round also passes a
`stop_rule` (vaecf.tools.halving), asked after each validation pass which models stop
now; it reads the models' validation history, which the checkpoint record keeps so a
resumed run decides as the first did.

It is over 300 lines because what a single run and a sweep share (resume, the epoch,
the passes by either pipeline, the validation cadence, both stopping rules, the
checkpoint record, the final test) is one loop, kept in one place.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from vaecf import checkpoints, console, device_data, input_pipeline
from vaecf.common import VaecfError
from vaecf.data.types import Split
from vaecf.evaluate import EvalResult

log = logging.getLogger(__name__)


class TrainingDiverged(VaecfError, FloatingPointError):
  """The loss became NaN/Inf; checkpoints saved before it are left intact."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the loop reads of a config (config.train and config.eval.select)."""
  epochs: int
  batch_size: int
  seed: int
  eval_every: int = 1
  patience: int = 0  # epochs without a better validation pass before a model stops; 0: never
  keep_latest: int = 1
  select: str = 'ndcg@100'
  device_data: str = 'auto'  # vaecf.device_data: auto | on | off
  device_data_budget_gb: float = 2.0
  steps_per_dispatch: int = 16

  @property
  def key(self) -> str:  # the rows', records' and results' name of `select`
    return checkpoints.best_key(self.select)

  @classmethod
  def from_config(cls, config) -> Plan:
    t = config.train
    return cls(epochs=t.epochs, batch_size=t.batch_size, seed=t.seed, eval_every=t.eval_every,
               patience=t.patience, keep_latest=t.keep_latest, select=config.eval.select,
               device_data=t.device_data, device_data_budget_gb=t.device_data_budget_gb,
               steps_per_dispatch=t.steps_per_dispatch)


class Trainee(Protocol):
  """One model or M models, as the loop trains them (the module docstring)."""
  labels: list[dict[str, Any]]
  phases: tuple  # of models.Phase
  mesh: Any
  after_fns: dict

  def init(self) -> Any: ...
  def step_of(self, carry) -> Any: ...
  def take(self, carry, active: list[bool]) -> Any: ...
  def put(self, carry, state, active: list[bool]) -> Any: ...
  def steps(self, active: list[bool]) -> dict: ...
  def validate(self, carry, active: list[bool]) -> list[EvalResult]: ...
  def keep_best(self, carry, improved: list[bool]) -> Any: ...
  def save(self, mngr, epoch: int, carry, record: dict, val: float | None) -> None: ...
  def best_of_record(self, record: dict) -> list[dict]: ...
  def test(self, mngr, carry, best: list[dict]) -> list[EvalResult]: ...
  def epoch_line(self, rows: list[dict | None], best: list[dict], eta: float) -> str: ...
  def results(self, best: list[dict], tests: list[EvalResult], seconds: float) -> dict: ...


def run_pass(step, state, train, batch_size: int, seed: int, epoch: int, mesh, *,
             pass_index: int = 0, title: str = '', feed=None, order=None, nnz=None):
  """One pass over the training users, shuffled on (seed, epoch, pass_index); returns
  (state, each step's metrics), left on the device. A long pass shows a progress line
  (console.Progress); checking it syncs with the device at most once a second, so the
  step pipeline stays full.

  `feed` (a vaecf.device_data.DeviceData) runs the pass on device-resident data, in its
  own order and blocks of steps (the metrics then come as device_data.Scanned blocks).
  Otherwise the host builds the batches: of input_pipeline.epoch_order's order, or of
  `order` and with `nnz` nonzeros per shard when given (input_pipeline.order_batches: how
  a device-fed pass is replayed on the host)."""
  n_train = train.shape[0]
  bar = console.Progress(title or f'epoch {epoch}', -(-n_train // batch_size),
                         enabled=jax.process_index() == 0)

  def show(i, m):
    if bar.due():
      jax.block_until_ready(m)
      bar.update(i, min(i * batch_size, n_train))

  if feed is not None:
    state, history = feed.run_pass(step, state, feed.users(seed, epoch, pass_index), show)
    bar.close()
    return state, history
  if order is None and nnz is None:
    batches = input_pipeline.epoch_batches(train, batch_size, seed, epoch, mesh, pass_index)
  else:
    if order is None:
      order = input_pipeline.epoch_order(n_train, seed, epoch, pass_index)
    batches = input_pipeline.order_batches(train, order, batch_size, mesh, nnz)
  history = []
  for i, batch in enumerate(input_pipeline.prefetch(batches), 1):
    state, m = step(state, batch)
    history.append(m)
    show(i, m)
  bar.close()
  return state, history


def train_epoch(trainee: Trainee, carry, active: list[bool], train, epoch: int, *,
                batch_size: int, seed: int, epochs: int, feed=None, orders=None,
                nnz: int | None = None):
  """One epoch of the active models: each phase's passes in order (pass k of the epoch
  shuffled on (seed, epoch, k)), then its `after` hook. Returns (carry, each model's
  epoch metrics, None for a stopped model); `epochs` only labels the progress line.
  `feed`, or `orders(epoch, k)` and `nnz`, go to run_pass (device-resident data, or the
  host pipeline with another order and padding)."""
  state, phase_steps = trainee.take(carry, active), trainee.steps(active)
  phases = trainee.phases
  multi = len(phases) > 1 or phases[0].passes > 1
  histories, k = {}, 0
  for phase in phases:
    histories[phase.name] = []
    for j in range(phase.passes):
      label = f' {phase.name} {j + 1}/{phase.passes}' if multi else ''
      state, h = run_pass(phase_steps[phase.name], state, train, batch_size, seed, epoch,
                          trainee.mesh, pass_index=k, title=f'epoch {epoch}/{epochs}{label}',
                          feed=feed, order=None if orders is None else orders(epoch, k),
                          nnz=nnz)
      histories[phase.name] += h
      k += 1
    if phase.name in trainee.after_fns:
      state = trainee.after_fns[phase.name](state)
  carry = trainee.put(carry, state, active)
  return carry, _spread(epoch_metrics(phases, histories, sum(active)), active)


def _means(history: list[dict], n_models: int) -> list[dict[str, float]]:
  """Per-model means over a phase's steps (beta: its last value); one host transfer.
  One model's metrics are scalars, M models' have a leading model axis; a device-fed
  pass's come in blocks of steps (device_data.Scanned)."""
  if not history:
    return [{} for _ in range(n_models)]
  if isinstance(history[0], device_data.Scanned):  # blocks of steps: already stacked
    stacked = jax.tree.map(lambda *v: jnp.concatenate(v), *(h.metrics for h in history))
  else:
    stacked = jax.tree.map(lambda *v: jnp.stack(v), *history)
  stacked = jax.device_get(stacked)
  if stacked['loss'].ndim == 1:
    stacked = {k: v[:, None] for k, v in stacked.items()}
  out = []
  for m in range(stacked['loss'].shape[1]):
    row = {k: float(np.mean(v[:, m])) for k, v in stacked.items() if k not in ('beta', 'users')}
    row['beta'] = float(stacked['beta'][-1, m])
    out.append(row)
  return out


def epoch_metrics(phases, histories: dict, n_models: int = 1) -> list[dict]:
  """Each model's host means of the epoch's metrics: the first phase's as loss, kl, ...;
  with several phases also each phase's as <phase>_loss, <phase>_kl, ..."""
  per = {name: _means(h, n_models) for name, h in histories.items()}
  out = [dict(m) for m in per[phases[0].name]]
  if len(per) > 1:
    for name, ms in per.items():
      for row, m in zip(out, ms):
        row.update({f'{name}_{k}': v for k, v in m.items() if k != 'beta'})
  return out


def _spread(values: list, active: list[bool]) -> list:
  it = iter(values)  # the active models' values in order; None for a stopped model
  return [next(it) if a else None for a in active]


def _stopped(b: dict, epoch: int, patience: int) -> bool:
  """Early stopping of one model after `epoch`: its best validation pass is `patience`
  epochs old."""
  return bool(patience) and b['epoch'] > 0 and epoch - b['epoch'] >= patience


def _stale(best: list[dict], epoch: int, patience: int, halted: list | None = None) -> bool:
  """The run's end: every model has stopped (on its patience, or by the stop rule after
  the epoch in `halted`)."""
  halted = halted or [None] * len(best)
  return all(_stopped(b, epoch, patience) or h is not None for b, h in zip(best, halted))


def _resume(mngr, wd, trainee: Trainee, key: str):
  """(carry, first epoch to train, best per model): fresh, or from the latest checkpoint."""
  carry = trainee.init()
  best = [{'epoch': 0, 'step': 0, key: -math.inf} for _ in trainee.labels]
  rule = {'history': [[] for _ in best], 'halted': [None] * len(best)}
  latest = mngr.latest_step()
  if latest is None:
    wd.truncate_metrics(0)  # a kill before the first checkpoint: its rows are not resumed
    return carry, 1, best, rule
  carry, record = checkpoints.restore(mngr, latest, checkpoints.abstract_of(carry))
  wd.truncate_metrics(record['epoch'])
  log.info('resumed from epoch %d (step %d) in %s', record['epoch'], record['step'], wd.path)
  rule = {k: record.get(k, v) for k, v in rule.items()}
  return carry, record['epoch'] + 1, trainee.best_of_record(record), rule


def _check_finite(trains: list, labels: list, epoch: int, step: int, wd) -> None:
  """The NaN stop: before this epoch's checkpoint, so the saved ones stay usable."""
  bad = [i for i, m in enumerate(trains)
         if m is not None and not all(math.isfinite(v) for v in m.values())]
  if bad:
    which = '' if len(labels) == 1 else f' for models {[labels[i] for i in bad]}'
    raise TrainingDiverged(
        f'non-finite training loss at epoch {epoch} (step {step}){which}: '
        f'{trains[bad[0]]}. Checkpoints up to epoch {epoch - 1} in '
        f'{wd.path / "checkpoints"} are intact; lower train.learning_rate or check the '
        'input data.')


def run(wd, split: Split, trainee: Trainee, plan: Plan, *,
        stop_after_epoch: int | None = None, results_file: str = 'results.json',
        score_test: bool = True, stop_rule=None) -> dict:
  """Trains (or resumes) `trainee` in workdir `wd`; returns and writes the results.

  `stop_after_epoch` ends early without the final test, as a kill would (tests of
  resumption). `score_test=False` leaves the test users unscored (a tuner's rounds, which
  must choose on validation alone). `stop_rule(epoch, history) -> [model]`, asked after
  each validation pass, stops those of the models still training beside patience;
  history[m] is model m's [[epoch, score], ...] of validation passes so far.
  """
  key, patience = plan.key, plan.patience
  mngr = checkpoints.manager(wd.path, plan.keep_latest)
  carry, start_epoch, best, rule = _resume(mngr, wd, trainee, key)
  history, halted = rule['history'], rule['halted']
  n, n_train = len(trainee.labels), split.train.shape[0]
  passes = sum(p.passes for p in trainee.phases)
  # Every pass of the run, resumed or not, so a resumed run pads its batches alike.
  feed = device_data.for_run(
      plan.device_data, split.train, trainee.mesh, plan.batch_size,
      plan.device_data_budget_gb, plan.seed,
      [(e, k) for e in range(1, plan.epochs + 1) for k in range(passes)],
      plan.steps_per_dispatch)
  epoch_times, stopped_at, was_active = [], None, [True] * n
  for epoch in range(start_epoch, plan.epochs + 1):
    if _stale(best, epoch - 1, patience, halted):
      stopped_at = epoch - 1
      break
    active = [not _stopped(b, epoch - 1, patience) and h is None
              for b, h in zip(best, halted)]
    for i in range(n):
      if was_active[i] and not active[i] and halted[i] is None:
        log.info('model %s stopped after epoch %d: no validation gain in %d epochs '
                 '(train.patience); the others go on', trainee.labels[i],
                 best[i]['epoch'] + patience, patience)
    was_active = active
    t0 = time.perf_counter()
    carry, trains = train_epoch(trainee, carry, active, split.train, epoch,
                                batch_size=plan.batch_size, seed=plan.seed, epochs=plan.epochs,
                                feed=feed)
    t_train = time.perf_counter() - t0
    step = int(jax.device_get(trainee.step_of(carry)))
    _check_finite(trains, trainee.labels, epoch, step, wd)
    rows = [None if m is None else
            {'epoch': epoch, 'step': step, **label,
             **{f'train_{k}': v for k, v in m.items() if k != 'beta'}, 'beta': m['beta'],
             'users_per_s': n_train * passes * sum(active) / t_train,
             'train_seconds': t_train}
            for label, m in zip(trainee.labels, trains)]
    val = None
    if epoch % plan.eval_every == 0 or epoch == plan.epochs:
      t1 = time.perf_counter()
      results = _spread(trainee.validate(carry, active), active)
      t_eval = time.perf_counter() - t1
      improved = [False] * n
      for i, (row, res) in enumerate(zip(rows, results)):
        if row is None:
          continue
        row.update({f'val_{k}': v for k, v in res.summary().items()}, eval_seconds=t_eval)
        improved[i] = row[key] > best[i][key]  # ties keep the first epoch
        if improved[i]:
          best[i] = {'epoch': epoch, 'step': step, key: row[key]}
        history[i].append([epoch, row[key]])
      carry = trainee.keep_best(carry, improved)
      val = next(r for r in rows if r is not None)[key]
      for i in (stop_rule(epoch, history) if stop_rule is not None else []):
        if active[i] and halted[i] is None:
          halted[i] = epoch
          log.info('model %s stopped after epoch %d by the stop rule: it cannot catch the '
                   'best (vaecf.tools.halving); the others go on', trainee.labels[i], epoch)
    record = {'epoch': epoch, 'step': step, 'best': best}
    if stop_rule is not None:  # in the checkpoint: a resumed run decides as the first did
      record.update(history=history, halted=halted)
    trainee.save(mngr, epoch, carry, record, val)
    seconds = time.perf_counter() - t0
    for row in rows:
      if row is not None:  # a stopped model's rows end where its single run's would
        row['seconds'] = seconds
        wd.log_epoch(row)
    epoch_times.append(seconds)
    log.info('%s', trainee.epoch_line(rows, best, np.mean(epoch_times[-5:]) *
                                      (plan.epochs - epoch)))
    if stop_after_epoch is not None and epoch >= stop_after_epoch:
      mngr.wait_until_finished()
      return {}
  mngr.wait_until_finished()
  if any(b['epoch'] == 0 for b in best):
    raise RuntimeError('no validation pass ran: nothing to select the best epoch from')
  if stopped_at is not None:
    log.info('early stop after epoch %d: no validation gain in %d epochs (train.patience)',
             stopped_at, patience)
  last = stopped_at or plan.epochs
  best = [{**b, 'stopped_after': h, 'stopped_by': 'stop rule'} if h is not None else
          {**b, 'stopped_after': b['epoch'] + patience}
          if _stopped(b, last, patience) and b['epoch'] + patience < plan.epochs else b
          for b, h in zip(best, halted)]
  t1 = time.perf_counter()
  tests = trainee.test(mngr, carry, best) if score_test else [None] * n
  results = trainee.results(best, tests, time.perf_counter() - t1)
  results['input'] = 'host' if feed is None else 'device'
  if stopped_at is not None:
    results['stopped_early_at'] = stopped_at
  wd.write_results(results, results_file)
  return results
