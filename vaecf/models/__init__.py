"""Model registry: a name in the config picks a factory that returns a `Model`.

A `Model` is a bundle of pure functions; the trainer, the evaluator and the
recommender only ever call these. Experiments add a model by calling `register`
in their own module (named by `config.model.module`), without editing vaecf/.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax.numpy as jnp

from vaecf.common import Params
from vaecf.models import dae, nn, vae

__all__ = ['Model', 'Params', 'register', 'available', 'build']


@dataclasses.dataclass(frozen=True)
class Model:
  """Pure functions of one model.

  init(key) -> params
  loss(params, x, key, beta) -> (per-user loss [B], {name: per-user [B]})
  score(params, x) -> logits [B, I] (evaluation mode)
  penalty(params) -> scalar added once per step (e.g. lam * sum ||W||^2)
  fallback(params) -> scores [I] for a user with no history (None: score an empty row)
  """
  name: str
  init: Callable
  loss: Callable
  score: Callable
  penalty: Callable = lambda params: jnp.zeros(())
  uses_beta: bool = False
  fallback: Callable | None = None


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


def weight_penalty(lam: float):
  """lam * sum ||W||^2; exactly nothing when lam == 0 (XLA cannot drop 0 * x itself)."""
  if not lam:
    return lambda params: jnp.zeros(())
  return lambda params: lam * nn.l2_penalty(params)


def hidden_dims(config, default):
  return tuple(default if config.model.hidden_dims is None else config.model.hidden_dims)


@register('multvae')
def _multvae(config, n_items: int) -> Model:
  m = config.model
  dims = hidden_dims(config, (600,))
  lam = 0.0 if m.weight_decay is None else m.weight_decay
  return Model(
      name='multvae',
      init=lambda key: vae.init(key, n_items, dims, m.latent_dim),
      loss=functools.partial(vae.loss, dropout_rate=m.dropout_rate,
                             likelihood=m.likelihood, **_common(config)),
      score=functools.partial(vae.score, **_common(config)),
      penalty=weight_penalty(lam),
      uses_beta=True,
      # With no evidence the posterior is the prior: rank by the decoder at its mean.
      fallback=functools.partial(vae.prior_mean_scores, latent_dim=m.latent_dim,
                                 dtype=_dtype(config)))


@register('multdae')
def _multdae(config, n_items: int) -> Model:
  m = config.model
  dims = hidden_dims(config, ())
  # The authors' lam = 0.01 / batch_size on sum ||W||^2 (weights only).
  lam = 0.01 / config.train.batch_size if m.weight_decay is None else m.weight_decay
  return Model(
      name='multdae',
      init=lambda key: dae.init(key, n_items, dims, m.latent_dim),
      loss=functools.partial(dae.loss, dropout_rate=m.dropout_rate,
                             likelihood=m.likelihood, **_common(config)),
      score=functools.partial(dae.score, **_common(config)),
      penalty=weight_penalty(lam))


