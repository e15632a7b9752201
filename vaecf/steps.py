"""Jitted, data-parallel train and score steps, built from a `Model`'s pure functions.

The global batch is split over a one-axis device mesh ('data'); parameters are
replicated and gradients averaged with psum inside `jax.shard_map`. The model
code never sees devices. The same functions run on 1 CPU, fake CPU devices, one
GPU or a TPU slice (multi-host included: the mesh spans every process's devices).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vaecf import input_pipeline, optim
from vaecf.distributed import AXIS, replicated
from vaecf.models import Model
from vaecf.sparse import SparseRows

TrainState = dict  # {'step': int32 [], 'params': pytree, 'opt_state': pytree}


def make_optimizer(config) -> optax.GradientTransformation:
  # optax.adam's maths and state, one expression per leaf (vaecf/optim.py).
  return optim.adam(config.train.learning_rate)


def init_state(model: Model, optimizer, key) -> TrainState:
  params = model.init(key)
  return {'step': jnp.zeros((), jnp.int32), 'params': params,
          'opt_state': optimizer.init(params)}


def schedule_from_config(config) -> dict[str, jax.Array]:
  """Traced annealing settings: changing them (or vmapping over them) never recompiles."""
  t = config.train
  const = -1.0 if t.constant_beta is None else float(t.constant_beta)
  return {'cap': jnp.float32(t.anneal_cap), 'total_steps': jnp.float32(t.total_anneal_steps),
          'constant': jnp.float32(const)}


def beta_at(step, sched) -> jax.Array:
  """min(cap, step / total_steps), or the constant when it is >= 0 (docs/protocol.md)."""
  annealed = jnp.minimum(sched['cap'], step.astype(jnp.float32) / sched['total_steps'])
  return jnp.where(sched['constant'] >= 0, sched['constant'], annealed)


def _data_parallel(per_shard, mesh):
  """shard_map over 'data'; on one device the plain function, which skips a no-op
  all-reduce of the whole gradient (about 3% of an ML-20M step on a CPU)."""
  if mesh.devices.size == 1:
    return functools.partial(per_shard, reduce=False)
  return jax.shard_map(functools.partial(per_shard, reduce=True), mesh=mesh,
                       in_specs=(jax.P(), jax.P(AXIS), jax.P(), jax.P(), jax.P()),
                       out_specs=jax.P())


def _grads_fn(model: Model):
  """Per-shard gradient of the batch-mean loss; psum makes it the global mean's."""
  def per_shard(params, x: SparseRows, key, beta, n_users, *, reduce: bool):
    def data_loss(p):
      loss_B, aux = model.loss(p, x, key, beta)
      mask = x.user_mask
      sums = {k: jnp.sum(v * mask) for k, v in aux.items()}
      return jnp.sum(loss_B * mask) / n_users, sums
    (loss, sums), grads = jax.value_and_grad(data_loss, has_aux=True)(params)
    # `params` enter replicated (unvarying over 'data'), so shard_map's autodiff
    # already sums their gradient over devices; only the reported values need psum.
    if reduce:
      loss, sums = jax.lax.psum((loss, sums), AXIS)
    return loss, sums, grads
  return per_shard


def make_train_step(model: Model, optimizer, mesh, seed: int, *, donate: bool = True):
  """step(state, batch, sched) -> (state, metrics); metrics stay on device."""
  base_key = jax.random.fold_in(jax.random.key(seed), 1)
  sharded = _data_parallel(_grads_fn(model), mesh)

  def step(state: TrainState, batch: SparseRows, sched) -> tuple[TrainState, dict[str, Any]]:
    beta = beta_at(state['step'], sched)
    key = jax.random.fold_in(base_key, state['step'])
    n_users = jnp.maximum(jnp.sum(batch.user_mask), 1.0)
    loss, sums, grads = sharded(state['params'], batch, key, beta, n_users)
    penalty, pgrads = jax.value_and_grad(model.penalty)(state['params'])
    grads = jax.tree.map(jnp.add, grads, pgrads)
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = {'loss': loss + penalty, 'beta': beta, 'users': n_users,
               **{k: v / n_users for k, v in sums.items()}}
    return {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}, metrics

  return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_score_fn(model: Model, mesh):
  """score(params, batch) -> logits [B, I], sharded over users like the batch."""
  sharded = jax.shard_map(lambda p, x: model.score(p, x), mesh=mesh,
                          in_specs=(jax.P(), jax.P(AXIS)), out_specs=jax.P(AXIS))
  return jax.jit(sharded)


def host_scalar_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
  """Means over steps of per-step metrics: one device-to-host transfer per call."""
  if not history:
    return {}
  stacked = jax.device_get(jax.tree.map(lambda *v: jnp.stack(v), *history))
  out = {k: float(np.mean(v)) for k, v in stacked.items() if k not in ('beta', 'users')}
  out['beta'] = float(stacked['beta'][-1])
  return out


def make_scorer(model: Model, mesh, eval_batch_size: int):
  """(score_fn factory, batch size): score_fn(params) -> evaluator's CSR -> logits."""
  n = mesh.devices.size
  batch = -(-eval_batch_size // n) * n  # a multiple of the device count: no padding users
  score = make_score_fn(model, mesh)

  def for_params(params):
    params = jax.device_put(params, replicated(mesh))  # no-op if already there
    def score_fn(x):
      logits = score(params, input_pipeline.global_batch(x, mesh, -(-x.shape[0] // n)))
      return logits if logits.shape[0] == x.shape[0] else logits[:x.shape[0]]
    return score_fn
  return for_params, batch
