"""`train_and_evaluate(config, workdir)`: the one trainer every model goes through.

Trains on the training users, selects the epoch with the best validation
NDCG@100, checkpoints (latest + best), resumes after a kill, and reports the
test metrics of the best checkpoint.
"""
from __future__ import annotations

import importlib
import json
import logging
import math
import time
from pathlib import Path

import jax
import numpy as np

from vaecf import checkpoints, evaluate as evaluation, input_pipeline, models, steps
from vaecf.data import load_split
from vaecf.data.types import Split
from vaecf.workdir import Workdir


class TrainingDiverged(FloatingPointError):
  """The loss became NaN/Inf; checkpoints saved before it are left intact."""


def import_model_module(config) -> None:
  """Imports `config.model.module` so an experiment can register its model."""
  if config.model.module:
    importlib.import_module(config.model.module)


def make_scorer(model: models.Model, mesh, eval_batch_size: int):
  """(score_fn factory, batch size): score_fn(params) -> evaluator's CSR -> logits."""
  n = mesh.devices.size
  batch = -(-eval_batch_size // n) * n  # a multiple of the device count: no padding users
  score = steps.make_score_fn(model, mesh)

  def for_params(params):
    params = jax.device_put(params, steps.replicated(mesh))  # no-op if already there
    def score_fn(x):
      logits = score(params, input_pipeline.global_batch(x, mesh, -(-x.shape[0] // n)))
      return logits if logits.shape[0] == x.shape[0] else logits[:x.shape[0]]
    return score_fn
  return for_params, batch


def evaluate_params(for_params, batch: int, params, split: Split, which: str):
  fold_in, targets = split.heldout(which)
  return evaluation.evaluate(for_params(params), fold_in, targets, batch_size=batch)


def _fmt_time(s: float) -> str:
  s = int(round(s))
  return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


def setup(config, workdir: str | Path, split: Split | None = None):
  """What every trainer starts from: (workdir, split, mesh, model, optimizer, init key)."""
  import_model_module(config)
  wd = Workdir(workdir)
  if split is None:
    split, info = load_split(config.data)
  else:
    info = {'name': config.data.name}
  wd.start(config, split, info)
  model = models.build(config, split.n_items)
  init_key = jax.random.fold_in(jax.random.key(config.train.seed), 0)
  return wd, split, steps.make_mesh(), model, steps.make_optimizer(config), init_key


def run_epoch(step_fn, state, sched, split: Split, config, mesh, epoch: int):
  """One shuffled pass over the training users; per-step metrics stay on the device."""
  history = []
  for batch in input_pipeline.prefetch(input_pipeline.epoch_batches(
      split.train, config.train.batch_size, config.train.seed, epoch, mesh)):
    state, m = step_fn(state, batch, sched)
    history.append(m)
  return state, history


def train_and_evaluate(config, workdir: str | Path, *, split: Split | None = None,
                       stop_after_epoch: int | None = None) -> dict:
  """Runs (or resumes) training in `workdir`; returns the results dict.

  `stop_after_epoch` ends the run early without final evaluation, as a kill would
  (used by tests of resumption).
  """
  wd, split, mesh, model, optimizer, init_key = setup(config, workdir, split)
  state = jax.jit(lambda k: steps.init_state(model, optimizer, k),
                  out_shardings=steps.replicated(mesh))(init_key)
  train_step = steps.make_train_step(model, optimizer, mesh, config.train.seed)
  sched = steps.schedule_from_config(config)
  for_params, eval_batch = make_scorer(model, mesh, config.train.eval_batch_size)

  mngr = checkpoints.manager(wd.path, config.train.keep_latest)
  start_epoch, best = 1, {'epoch': 0, 'step': 0, checkpoints.BEST_METRIC: -math.inf}
  latest = mngr.latest_step()
  if latest is not None:
    state, record = checkpoints.restore(mngr, latest, checkpoints.abstract_of(state))
    start_epoch, best = record['epoch'] + 1, record['best']
    wd.truncate_metrics(record['epoch'])
    logging.info('resumed from epoch %d (step %d) in %s', record['epoch'], record['step'],
                 wd.path)

  epochs = config.train.epochs
  n_train = split.train.shape[0]
  epoch_times = []
  for epoch in range(start_epoch, epochs + 1):
    t0 = time.perf_counter()
    state, history = run_epoch(train_step, state, sched, split, config, mesh, epoch)
    train = steps.host_scalar_metrics(history)
    t_train = time.perf_counter() - t0
    step = int(jax.device_get(state['step']))
    if not all(math.isfinite(v) for v in train.values()):
      raise TrainingDiverged(
          f'non-finite training loss at epoch {epoch} (step {step}): {train}. Checkpoints up '
          f'to epoch {epoch - 1} in {wd.path / "checkpoints"} are intact; lower '
          'train.learning_rate or check the input data.')
    row = {'epoch': epoch, 'step': step, **{f'train_{k}': v for k, v in train.items()
                                            if k != 'beta'}, 'beta': train['beta'],
           'users_per_s': n_train / t_train, 'train_seconds': t_train}
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
    eta = np.mean(epoch_times[-5:]) * (epochs - epoch)
    val_txt = (f'val ndcg@100 {val_ndcg:.4f} (best {best[checkpoints.BEST_METRIC]:.4f} @ '
               f'{best["epoch"]})' if val_ndcg is not None else 'no eval')
    kl_txt = f" kl {train.get('kl', 0.0):.2f} beta {train['beta']:.4f}" if model.uses_beta else ''
    logging.info('epoch %d/%d step %d | loss %.2f%s | %s | %.0f users/s %.1fs/epoch | ETA %s',
                 epoch, epochs, step, train['loss'], kl_txt, val_txt, row['users_per_s'],
                 row['seconds'], _fmt_time(eta))
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
  logging.info('best epoch %d: test %s', best['epoch'], json.dumps(
      {k: round(v, 4) for k, v in test.summary().items()}))
  return results
