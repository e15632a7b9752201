"""Parallel beta sweeps: M models trained at once in one jitted, vmapped step.

Every model starts from the same initial parameters (the single run's init key),
sees the same batches and draws the same dropout/eps noise; only its beta setting
differs. So model m of a sweep is exactly the single run of `model_config(config, v_m)`
(tests/test_sweep.py). The step is `steps.make_train_step` vmapped over a leading
model axis of (parameters, optimiser state, schedule); the step counter and each
batch are shared, and the batch is still split over 'data'. Evaluation scores a
batch for all M models in one pass.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
import scipy.sparse as sp

from vaecf import (checkpoints, distributed, evaluate as evaluation, input_pipeline, models,
                   sparse, steps, train)
from vaecf.data.types import Split

log = logging.getLogger(__name__)
MODES = ('cap', 'constant', 'anneal_steps')
BEST = checkpoints.BEST_METRIC


def model_config(config, value: float):
  """The single-run config equivalent to the sweep's model with setting `value`."""
  mode = config.sweep.mode
  if mode not in MODES:
    raise ValueError(f'config.sweep.mode={mode!r}: use one of {MODES}')
  c = config.copy_and_resolve_references()
  if mode == 'cap':
    c.train.anneal_cap = float(value)
  elif mode == 'constant':
    c.train.constant_beta = float(value)
  else:
    c.train.total_anneal_steps = int(round(value))
  return c


def schedules(config) -> dict[str, jax.Array]:
  """Each model's traced schedule, stacked on a leading model axis: {name: [M]}."""
  per_model = [steps.schedule_from_config(model_config(config, v)) for v in config.sweep.caps]
  return jax.tree.map(lambda *v: jnp.stack(v), *per_model)


def over_models(fn, models_per_pass: int | None):
  """fn mapped over a leading model axis of its arguments' leaves.

  None: one `jax.vmap` over all models. k: `jax.lax.map` over chunks of k vmapped
  models, for backends where the batched scatters of a vmapped sparse layer are
  slower than a loop (XLA on CPU); the results are the same.
  """
  if models_per_pass is None:
    return jax.vmap(fn)
  return lambda *args: jax.lax.map(lambda a: fn(*a), args, batch_size=models_per_pass)


def make_sweep_step(model: models.Model, optimizer, mesh, seed: int, *,
                    models_per_pass: int | None = None, donate: bool = True):
  """step(states, batch, scheds_M) -> (states, metrics_M): the single step over models.

  The step counter is shared, so the dropout and eps draws are made once per step.
  """
  single = steps.make_train_step(model, optimizer, mesh, seed, donate=False)

  def step(states, batch, scheds_M):
    def one(params, opt_state, sched):
      new, metrics = single({'step': states['step'], 'params': params, 'opt_state': opt_state},
                            batch, sched)
      return new['params'], new['opt_state'], metrics
    params, opt_state, metrics = over_models(one, models_per_pass)(
        states['params'], states['opt_state'], scheds_M)
    return {'step': states['step'] + 1, 'params': params, 'opt_state': opt_state}, metrics

  return jax.jit(step, donate_argnums=(0,) if donate else ())


def stack_states(state, n_models: int):
  """One shared step counter; M copies of the parameters and optimiser state."""
  copies = lambda t: jax.tree.map(lambda a: jnp.broadcast_to(a, (n_models, *a.shape)), t)
  return {'step': state['step'], 'params': copies(state['params']),
          'opt_state': copies(state['opt_state'])}


@functools.partial(jax.jit, donate_argnums=(0,))
def _keep_best(best_M, params_M, improved_M):
  def pick(b, p):
    return jnp.where(improved_M.reshape((-1,) + (1,) * (p.ndim - 1)), p, b)
  return jax.tree.map(pick, best_M, params_M)


def make_sweep_scorer(model: models.Model, mesh, eval_batch_size: int,
                      models_per_pass: int | None = None):
  """(score_fn factory, batch): score_fn(params_M)(csr) -> logits [M, B, I], one pass."""
  n = mesh.devices.size
  batch = -(-eval_batch_size // n) * n
  single = steps.make_score_fn(model, mesh)
  score = jax.jit(lambda params_M, x: over_models(lambda p: single(p, x), models_per_pass)(
      params_M))

  def for_params(params_M):
    def score_fn(x):
      logits = score(params_M, input_pipeline.global_batch(x, mesh, -(-x.shape[0] // n)))
      return logits[:, :x.shape[0]]
    return score_fn
  return for_params, batch


@functools.lru_cache(maxsize=None)
def _models_metrics(metrics: tuple[tuple[str, int], ...]):
  per_model = functools.partial(evaluation.batch_metrics, metrics=metrics)
  return jax.jit(jax.vmap(per_model, in_axes=(0, None, None, None, None)))


def evaluate_models(score_fn: Callable, fold_in: sp.csr_matrix, targets: sp.csr_matrix, *,
                    metrics: Sequence[tuple[str, int]] = evaluation.DEFAULT_METRICS,
                    batch_size: int = 2000) -> list[evaluation.EvalResult]:
  """`evaluation.evaluate` for M models whose scores come from one pass: [M, B, I]."""
  metrics = tuple((str(kind), int(k)) for kind, k in metrics)
  keep = np.flatnonzero(np.diff(targets.indptr) > 0)
  fold_in, targets = fold_in[keep], targets[keep]
  batch_size = max(1, min(batch_size, max(len(keep), 1)))
  chunks = []
  for start, stop, fold_b in sparse.batches(fold_in, batch_size):
    f_idx, f_val = sparse.to_padded(fold_b)
    t_idx, t_val = sparse.to_padded(sparse.pad_rows(targets[start:stop], batch_size))
    vals = _models_metrics(metrics)(score_fn(fold_b), f_idx, f_val, t_idx, t_val)
    if jax.process_count() > 1:  # as evaluation.evaluate: users live on every process
      vals = multihost_utils.process_allgather(vals, tiled=True)
    chunks.append({k: np.asarray(v)[:, :stop - start] for k, v in jax.device_get(vals).items()})
  n_models = next(iter(chunks[0].values())).shape[0] if chunks else 0
  return [evaluation.EvalResult(
      per_user={name: np.concatenate([c[name][m] for c in chunks]) for name in chunks[0]},
      rows=keep) for m in range(n_models)]


def per_model_means(history: list[dict[str, jax.Array]]) -> list[dict[str, float]]:
  """Per-model means over an epoch's steps (beta: its last value); one host transfer."""
  stacked = jax.device_get(jax.tree.map(lambda *v: jnp.stack(v), *history))
  n_models = stacked['loss'].shape[1]
  out = []
  for m in range(n_models):
    row = {k: float(np.mean(v[:, m])) for k, v in stacked.items() if k not in ('beta', 'users')}
    row['beta'] = float(stacked['beta'][-1, m])
    out.append(row)
  return out


def _save(mngr, epoch: int, tree, record: dict) -> None:
  """A checkpoint without metrics: only the latest is kept (it holds the best params)."""
  mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                           record=ocp.args.JsonSave(record)))


def _warn_unreachable(config, n_train: int) -> None:
  """Caps above the beta the run's last step reaches would train identical models."""
  t = config.train
  last = t.epochs * math.ceil(n_train / t.batch_size) / t.total_anneal_steps
  if config.sweep.mode == 'cap' and sum(v >= last for v in config.sweep.caps) > 1:
    log.warning('beta only reaches %.4g by the last step (total_anneal_steps=%d), so the '
                    'caps >= that train identical models; lower train.total_anneal_steps '
                    '(e.g. to the run\'s number of steps, as experiments.select_beta does)',
                    last, t.total_anneal_steps)


def train_sweep(config, workdir: str | Path, *, split: Split | None = None,
                models_per_pass: int | None = None, stop_after_epoch: int | None = None
                ) -> dict:
  """Trains (or resumes) the sweep in `workdir`; returns and writes `sweep.json`.

  metrics.jsonl holds one row per (epoch, model) with 'model' and 'sweep_value';
  the latest checkpoint holds every model's state and best-so-far parameters.
  """
  values = [float(v) for v in config.sweep.caps]
  n_models = len(values)
  if n_models == 0:
    raise ValueError('config.sweep.caps is empty: nothing to sweep')
  wd, split, mesh, model, optimizer, init_key = train.setup(config, workdir, split)
  try:
    return _run_sweep(config, wd, split, mesh, model, optimizer, init_key, values,
                      models_per_pass, stop_after_epoch)
  finally:
    wd.close()


def _run_sweep(config, wd, split, mesh, model, optimizer, init_key, values, models_per_pass,
               stop_after_epoch):
  steps.require_single_phase(model, 'the vmapped sweep')
  n_models = len(values)
  if config.sweep.mode != 'anneal_steps' and not model.uses_beta and len(set(values)) > 1:
    log.warning('%s ignores beta: every model of this sweep trains identically', model.name)
  _warn_unreachable(config, split.train.shape[0])
  states = jax.jit(lambda k: stack_states(steps.init_state(model, optimizer, k), n_models),
                   out_shardings=distributed.replicated(mesh))(init_key)
  best_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p))(states['params'])
  sweep_step = make_sweep_step(model, optimizer, mesh, config.train.seed,
                               models_per_pass=models_per_pass)
  scheds = schedules(config)
  for_params, eval_batch = make_sweep_scorer(model, mesh, config.train.eval_batch_size,
                                             models_per_pass)

  mngr = checkpoints.manager(wd.path, config.train.keep_latest)
  start_epoch = 1
  best = [{'epoch': 0, 'step': 0, BEST: -math.inf} for _ in values]
  if mngr.latest_step() is None:
    wd.truncate_metrics(0)  # a kill before the first checkpoint: its rows are not resumed
  else:
    abstract = checkpoints.abstract_of({'states': states, 'best_params': best_params})
    restored, record = checkpoints.restore(mngr, mngr.latest_step(), abstract)
    states, best_params = restored['states'], restored['best_params']
    start_epoch, best = record['epoch'] + 1, record['best']
    wd.truncate_metrics(record['epoch'])
    log.info('resumed the sweep from epoch %d in %s', record['epoch'], wd.path)

  epochs, n_train = config.train.epochs, split.train.shape[0]
  for epoch in range(start_epoch, epochs + 1):
    t0 = time.perf_counter()
    states, history = train.run_epoch(sweep_step, states, scheds, split, config, mesh, epoch)
    trains = per_model_means(history)
    t_train = time.perf_counter() - t0
    step = int(jax.device_get(states['step']))
    bad = [values[i] for i, t in enumerate(trains)
           if not all(math.isfinite(v) for v in t.values())]
    if bad:
      raise train.TrainingDiverged(
          f'non-finite training loss at epoch {epoch} for sweep values {bad}; checkpoints '
          f'up to epoch {epoch - 1} in {wd.path / "checkpoints"} are intact.')
    rows = [{'epoch': epoch, 'step': step, 'model': i, 'sweep_value': v,
             **{f'train_{k}': x for k, x in t.items() if k != 'beta'}, 'beta': t['beta'],
             'users_per_s': n_train * n_models / t_train, 'train_seconds': t_train}
            for i, (v, t) in enumerate(zip(values, trains))]
    if epoch % config.train.eval_every == 0 or epoch == epochs:
      t1 = time.perf_counter()
      vals = evaluate_models(for_params(states['params']), *split.heldout('val'),
                             batch_size=eval_batch)
      t_eval = time.perf_counter() - t1
      improved = []
      for i, (row, res) in enumerate(zip(rows, vals)):
        row.update({f'val_{k}': x for k, x in res.summary().items()}, eval_seconds=t_eval)
        improved.append(row[BEST] > best[i][BEST])
        if improved[-1]:
          best[i] = {'epoch': epoch, 'step': step, BEST: row[BEST]}
      best_params = _keep_best(best_params, states['params'], jnp.asarray(improved))
    _save(mngr, epoch, {'states': states, 'best_params': best_params},
          {'epoch': epoch, 'step': step, 'best': best})
    for row in rows:
      row['seconds'] = time.perf_counter() - t0
      wd.log_epoch(row)
    log.info('epoch %d/%d step %d | %.1fs | val ndcg@100 %s', epoch, epochs, step,
                 rows[0]['seconds'], ' '.join(f'{v:g}:{r.get(BEST, math.nan):.4f}'
                                              for v, r in zip(values, rows)))
    if stop_after_epoch is not None and epoch >= stop_after_epoch:
      mngr.wait_until_finished()
      return {}
  mngr.wait_until_finished()
  if any(b['epoch'] == 0 for b in best):
    raise RuntimeError('no validation pass ran: nothing to select the best epochs from')
  t1 = time.perf_counter()
  tests = evaluate_models(for_params(best_params), *split.heldout('test'),
                          batch_size=eval_batch)
  results = {
      'model': config.model.name, 'dataset': config.data.name, 'mode': config.sweep.mode,
      'values': values,
      'models': [{'index': i, 'value': v, 'best_epoch': b['epoch'], 'best_step': b['step'],
                  BEST: b[BEST], 'test': t.summary(), 'n_test_users': t.n_users}
                 for i, (v, b, t) in enumerate(zip(values, best, tests))],
      'test_eval_seconds': time.perf_counter() - t1,
      'devices': mesh.devices.size, 'platform': jax.devices()[0].platform,
  }
  wd.write_results(results, 'sweep.json')
  return results


def restore_best_params(workdir: str | Path, config, n_items: int, mesh):
  """The best-by-validation parameters of every model of a finished sweep: [M, ...]."""
  model = models.build(config, n_items)
  optimizer = steps.make_optimizer(config)
  state = checkpoints.abstract_replicated(
      lambda: stack_states(steps.init_state(model, optimizer, jax.random.key(0)),
                           len(config.sweep.caps)), mesh)
  mngr = checkpoints.manager(Path(workdir), config.train.keep_latest)
  abstract = {'states': state, 'best_params': state['params']}
  restored, _ = checkpoints.restore(mngr, mngr.latest_step(), abstract)
  return restored['best_params']
