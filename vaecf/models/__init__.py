"""Model registry: a name in the config picks a factory that returns a `Model`.

A `Model` is a bundle of pure functions; the trainer, the evaluator and the
recommender only ever call these. Experiments add a model by calling `register`
in their own module (named by `config.model.module`), without editing vaecf/.

The simplest model (Mult-VAE, Mult-DAE) trains in one phase: one shuffled pass per
epoch, the config's Adam over all parameters. A model may instead declare its own
`optimizers` and a tuple of `Phase`s (which top-level parameters each updates, with
which loss options, how many passes, and a hook run after it), and keep state that is
not trained (`init_model_state`), which the checkpoints hold (RecVAE: experiments/recvae.py).

`hparams` names the model's traced hyperparameters with this config's values (e.g.
dropout_rate, weight_decay, RecVAE's gamma): the step passes them to `loss` and `penalty`
as keyword arguments holding traced scalars, so a sweep trains M values in one vmapped
step (vaecf.sweep) and changing one never recompiles.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from vaecf.common import Params
from vaecf.models import dae, nn, vae

__all__ = ['Model', 'Phase', 'DEFAULT_OPTIMIZER', 'Params', 'register', 'available', 'build']


DEFAULT_OPTIMIZER = 'adam'


@dataclasses.dataclass(frozen=True)
class Phase:
  """One stage of a training epoch.

  name: labels its metrics (train_<name>_loss, ...) when a model has several phases.
  optimizer: a key of `Model.optimizers` (each keeps its own state in the checkpoint).
  params: the top-level keys of the params dict this phase updates (None: all); the
    others enter the loss as constants and come out bit-identical.
  passes: shuffled passes over the training users per epoch.
  loss_options: keyword arguments of `Model.loss` in this phase (e.g. dropout_rate).
  after(params, model_state) -> model_state, run once after the phase's passes.
  """
  name: str = 'train'
  optimizer: str = DEFAULT_OPTIMIZER
  params: tuple[str, ...] | None = None
  passes: int = 1
  loss_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  after: Callable | None = None

  def __post_init__(self):
    if isinstance(self.params, str):  # one key: Phase(params='decoder')
      object.__setattr__(self, 'params', (self.params,))
    elif self.params is not None:
      object.__setattr__(self, 'params', tuple(self.params))


@dataclasses.dataclass(frozen=True)
class Model:
  """Pure functions of one model.

  init(key) -> params
  loss(params, x, key, beta, **phase.loss_options) -> (per-user loss [B], {name: [B]});
    a model with `init_model_state` also gets `model_state=` (constant in the step)
  score(params, x) -> logits [B, I] (evaluation mode)
  penalty(params, **hparams) -> scalar added once per step (e.g. lam * sum ||W||^2)
  fallback(params) -> scores [I] for a user with no history (None: score an empty row)
  optimizers: {name: optax transformation}; None: the config's Adam, named 'adam'
  phases: the epoch, in order; the default is one pass of one phase over all params
  init_model_state(key) -> a pytree the trainer keeps and checkpoints but never trains
  hparams: {name: value} passed traced to loss and penalty as keywords (both take all)
  """
  name: str
  init: Callable
  loss: Callable
  score: Callable
  penalty: Callable = lambda params, **hparams: jnp.zeros(())
  uses_beta: bool = False
  fallback: Callable | None = None
  optimizers: Mapping[str, Any] | None = None
  phases: tuple[Phase, ...] = (Phase(),)
  init_model_state: Callable | None = None
  hparams: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not self.phases:
      raise ValueError(f'model {self.name!r} declares no training phase')
    names = self.optimizers.keys() if self.optimizers is not None else {DEFAULT_OPTIMIZER}
    updates = {}
    for p in self.phases:
      if p.optimizer not in names:
        raise ValueError(f'model {self.name!r}: phase {p.name!r} uses optimizer '
                         f'{p.optimizer!r}; declared: {sorted(names)}')
      if p.passes < 1:
        raise ValueError(f'model {self.name!r}: phase {p.name!r} has passes={p.passes}')
      keys = None if p.params is None else tuple(p.params)
      # An optimizer's state is shaped like the parameters it updates, so two phases
      # can share one only if they update the same ones.
      if updates.setdefault(p.optimizer, keys) != keys:
        raise ValueError(f'model {self.name!r}: optimizer {p.optimizer!r} is used by '
                         'phases that update different parameters')
      clash = set(p.loss_options) & set(self.hparams)
      if clash:
        raise ValueError(f'model {self.name!r}: phase {p.name!r} fixes loss options '
                         f'{sorted(clash)} that are also traced hparams')
      if p.after is not None and self.init_model_state is None:
        raise ValueError(f'model {self.name!r}: phase {p.name!r} has an `after` hook on '
                         'model state, but the model declares no init_model_state')
    if len({p.name for p in self.phases}) != len(self.phases):
      raise ValueError(f'model {self.name!r}: phase names must differ')


_FACTORIES: dict[str, Callable[[Any, int], Model]] = {}


def register(name: str):
  """Decorator: `@register('mymodel') def make(config, n_items) -> Model`."""
  def wrap(factory):
    _FACTORIES[name] = factory
    return factory
  return wrap


def available() -> list[str]:
  return sorted(_FACTORIES)


def build(config, n_items: int) -> Model:
  name = config.model.name
  if name not in _FACTORIES:
    raise ValueError(f'unknown model {name!r}; registered: {available()} '
                     '(an experiment registers its own via config.model.module)')
  return _FACTORIES[name](config, n_items)


def _dtype(config):
  return None if config.model.compute_dtype == 'float32' else jnp.dtype(config.model.compute_dtype)


def _common(config) -> dict:
  """Keyword arguments the built-in models' loss and score share."""
  return dict(dtype=_dtype(config), input_layer=config.model.input_layer)


def hidden_dims(config, default):
  return tuple(default if config.model.hidden_dims is None else config.model.hidden_dims)


def l2_if_nonzero(params, weight_decay):
  """weight_decay * sum ||W||^2, skipped at run time when it is 0 (XLA cannot drop 0 * x,
  and the sum and its gradient are a pass over every weight)."""
  return jax.lax.cond(weight_decay != 0, lambda p: weight_decay * nn.l2_penalty(p),
                      lambda p: jnp.zeros((), jnp.float32), params)


def _traced_regularisers(loss_fn, hparams: dict):
  """(loss, penalty) taking dropout_rate and weight_decay (traced in the step; called
  directly, the config's values)."""
  def loss(params, x, key, beta, *, dropout_rate=hparams['dropout_rate'],
           weight_decay=hparams['weight_decay']):
    del weight_decay
    return loss_fn(params, x, key, beta, dropout_rate=dropout_rate)

  def penalty(params, *, dropout_rate=hparams['dropout_rate'],
              weight_decay=hparams['weight_decay']):
    del dropout_rate
    return l2_if_nonzero(params, weight_decay)
  return loss, penalty


@register('multvae')
def _multvae(config, n_items: int) -> Model:
  m = config.model
  dims = hidden_dims(config, (600,))
  lam = 0.0 if m.weight_decay is None else m.weight_decay
  hparams = {'dropout_rate': m.dropout_rate, 'weight_decay': lam}
  loss, penalty = _traced_regularisers(functools.partial(
      vae.loss, likelihood=m.likelihood, **_common(config)), hparams)
  return Model(
      name='multvae',
      init=lambda key: vae.init(key, n_items, dims, m.latent_dim),
      loss=loss,
      score=functools.partial(vae.score, **_common(config)),
      penalty=penalty,
      uses_beta=True,
      # With no evidence the posterior is the prior: rank by the decoder at its mean.
      fallback=functools.partial(vae.prior_mean_scores, latent_dim=m.latent_dim,
                                 dtype=_dtype(config)),
      hparams=hparams)


@register('multdae')
def _multdae(config, n_items: int) -> Model:
  m = config.model
  dims = hidden_dims(config, ())
  # The authors' lam = 0.01 / batch_size on sum ||W||^2 (weights only).
  lam = 0.01 / config.train.batch_size if m.weight_decay is None else m.weight_decay
  hparams = {'dropout_rate': m.dropout_rate, 'weight_decay': lam}
  loss, penalty = _traced_regularisers(functools.partial(
      dae.loss, likelihood=m.likelihood, **_common(config)), hparams)
  return Model(
      name='multdae',
      init=lambda key: dae.init(key, n_items, dims, m.latent_dim),
      loss=loss,
      score=functools.partial(dae.score, **_common(config)),
      penalty=penalty,
      hparams=hparams)
