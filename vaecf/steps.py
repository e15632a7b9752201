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
import optax

from vaecf import input_pipeline, optim
from vaecf.distributed import AXIS, replicated
from vaecf.models import DEFAULT_OPTIMIZER, Model, Phase
from vaecf.sparse import SparseRows

# {'step': int32 [], 'params': pytree, 'opt_state': pytree} and, for a model with
# `init_model_state`, 'model_state': pytree (checkpointed, never trained). opt_state is the
# one optimizer's state for a model that declares none (the layout of earlier runs), else
# {optimizer name: state over the parameters its phases update}.
TrainState = dict


class TracedLR(optax.GradientTransformation):
  """An optimizer at learning rate 1 whose updates the step scales by the traced
  hyperparameter 'learning_rate' (schedule_from_config; a sweep vmaps over it). Adam's
  rate is its final scale, so this is optax.adam(lr) to the bit."""
  __slots__ = ()


def make_optimizer(config) -> optax.GradientTransformation:
  """The config's Adam (optax.adam's maths and state, one expression per leaf:
  vaecf/optim.py); its learning rate comes traced from the step's hyperparameters."""
  del config  # the rate is in schedule_from_config(config)
  return TracedLR(*optim.adam(1.0))


def model_optimizers(model: Model, optimizer) -> dict[str, optax.GradientTransformation]:
  """The model's own optimizers, or `optimizer` (the config's) under the default name."""
  if model.optimizers is not None:
    return dict(model.optimizers)
  return {DEFAULT_OPTIMIZER: optimizer}


def _trained(params, keys):
  return params if keys is None else {k: params[k] for k in keys}


def _with(params, keys, trained):
  return trained if keys is None else {**params, **trained}


def init_state(model: Model, optimizer, key) -> TrainState:
  """Params from `key`; each optimizer's state over the params its phases update."""
  params = model.init(key)
  txs = model_optimizers(model, optimizer)
  updated = {p.optimizer: p.params for p in model.phases}
  opt = {name: txs[name].init(_trained(params, keys)) for name, keys in updated.items()}
  state = {'step': jnp.zeros((), jnp.int32), 'params': params,
           'opt_state': opt if model.optimizers is not None else opt[DEFAULT_OPTIMIZER]}
  if model.init_model_state is not None:
    # A key of its own: the params drawn from `key` stay what they were without it.
    state['model_state'] = model.init_model_state(jax.random.fold_in(key, 1))
  return state


def schedule_from_config(config) -> dict[str, jax.Array]:
  """The trainer's traced hyperparameters (annealing and learning rate): changing them,
  or vmapping over them, never recompiles."""
  t = config.train
  const = -1.0 if t.constant_beta is None else float(t.constant_beta)
  return {'cap': jnp.float32(t.anneal_cap), 'total_steps': jnp.float32(t.total_anneal_steps),
          'constant': jnp.float32(const), 'learning_rate': jnp.float32(t.learning_rate)}


def hparams_from_config(config, model: Model) -> dict[str, jax.Array]:
  """Everything the step reads traced: the schedule and the model's own `hparams`."""
  return {**schedule_from_config(config),
          **{k: jnp.float32(v) for k, v in model.hparams.items()}}


def model_hparams(model: Model, hparams) -> dict[str, Any]:
  """The model's keyword hyperparameters: traced where `hparams` holds them, else the
  model's own values (a step given a bare schedule)."""
  return {k: hparams.get(k, v) for k, v in model.hparams.items()}


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
                       in_specs=(jax.P(), jax.P(), jax.P(AXIS), jax.P(), jax.P(), jax.P()),
                       out_specs=jax.P())


def _grads_fn(model: Model, phase: Phase):
  """Per-shard gradient of the batch-mean loss w.r.t. the phase's params; psum makes
  it the global mean's. `const` holds what the loss reads but this phase never
  updates: the other params and the model state."""
  keys, options = phase.params, dict(phase.loss_options)

  def per_shard(trained, const, x: SparseRows, key, beta, n_users, *, reduce: bool):
    def data_loss(p):
      extra = {'model_state': const['model_state']} if 'model_state' in const else {}
      loss_B, aux = model.loss(_with(const['params'], keys, p), x, key, beta, **options,
                               **extra, **const['hparams'])
      mask = x.user_mask
      sums = {k: jnp.sum(v * mask) for k, v in aux.items()}
      return jnp.sum(loss_B * mask) / n_users, sums
    (loss, sums), grads = jax.value_and_grad(data_loss, has_aux=True)(trained)
    # `params` enter replicated (unvarying over 'data'), so shard_map's autodiff
    # already sums their gradient over devices; only the reported values need psum.
    if reduce:
      loss, sums = jax.lax.psum((loss, sums), AXIS)
    return loss, sums, grads
  return per_shard


def _make_step(model: Model, txs: dict, phase: Phase, mesh, seed: int, donate: bool):
  base_key = jax.random.fold_in(jax.random.key(seed), 1)
  sharded = _data_parallel(_grads_fn(model, phase), mesh)
  tx, keys, own = txs[phase.optimizer], phase.params, model.optimizers is not None

  def step(state: TrainState, batch: SparseRows, sched) -> tuple[TrainState, dict[str, Any]]:
    beta = beta_at(state['step'], sched)
    key = jax.random.fold_in(base_key, state['step'])
    n_users = jnp.maximum(jnp.sum(batch.user_mask), 1.0)
    params = state['params']
    trained = _trained(params, keys)
    hp = model_hparams(model, sched)
    const = {'params': {} if keys is None else {k: v for k, v in params.items()
                                                if k not in keys}, 'hparams': hp}
    if 'model_state' in state:
      const['model_state'] = state['model_state']
    loss, sums, grads = sharded(trained, const, batch, key, beta, n_users)
    penalty, pgrads = jax.value_and_grad(
        lambda p: model.penalty(_with(params, keys, p), **hp))(trained)
    grads = jax.tree.map(jnp.add, grads, pgrads)
    opt_state = state['opt_state'][phase.optimizer] if own else state['opt_state']
    updates, opt_state = tx.update(grads, opt_state, trained)
    if isinstance(tx, TracedLR):
      lr = sched['learning_rate']
      updates = jax.tree.map(lambda u: (lr * u).astype(u.dtype), updates)
    trained = optax.apply_updates(trained, updates)
    metrics = {'loss': loss + penalty, 'beta': beta, 'users': n_users,
               **{k: v / n_users for k, v in sums.items()}}
    new = {**state, 'step': state['step'] + 1, 'params': _with(params, keys, trained),
           'opt_state': {**state['opt_state'], phase.optimizer: opt_state} if own
           else opt_state}
    return new, metrics

  return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_train_step(model: Model, optimizer, mesh, seed: int, *, donate: bool = True):
  """step(state, batch, sched) -> (state, metrics) of a single-phase model; metrics
  stay on device. `optimizer` is used unless the model declares its own."""
  if len(model.phases) != 1:
    raise ValueError(f'{model.name!r} has {len(model.phases)} phases: use make_phase_steps')
  return _make_step(model, model_optimizers(model, optimizer), model.phases[0], mesh, seed,
                    donate)


def make_phase_steps(model: Model, optimizer, mesh, seed: int, *, donate: bool = True
                     ) -> dict[str, Any]:
  """{phase name: step(state, batch, sched) -> (state, metrics)}, one jitted step per
  phase (each differentiates only the params it updates)."""
  txs = model_optimizers(model, optimizer)
  return {p.name: _make_step(model, txs, p, mesh, seed, donate) for p in model.phases}


def make_after_fn(phase: Phase):
  """state -> state with model_state = phase.after(params, model_state).

  The copy keeps model state from sharing buffers with the params (a refresh that
  returns them as they are): the next step donates the params.
  """
  def after(state: TrainState) -> TrainState:
    new = phase.after(state['params'], state['model_state'])
    return {**state, 'model_state': jax.tree.map(jnp.copy, new)}
  return jax.jit(after)


def make_score_fn(model: Model, mesh):
  """score(params, batch) -> logits [B, I], sharded over users like the batch."""
  sharded = jax.shard_map(lambda p, x: model.score(p, x), mesh=mesh,
                          in_specs=(jax.P(), jax.P(AXIS)), out_specs=jax.P(AXIS))
  return jax.jit(sharded)


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
