"""The model registry: what a model is (`Model`, `Phase`), the config keys it reads, and
the names that pick it.

A model registers a factory `make(config, n_items) -> Model` under a name, with every
config key it reads beyond `vaecf.config.base_config()`'s, and its defaults:

  @register('recvae', model={'gamma': 0.005, ...}, train={'learning_rate': 5e-4, ...})

`vaecf.presets.compose(name, dataset)` starts a config from those defaults, so
`--config.model.gamma=0.01` works on every dataset, and `build` refuses a config that
lacks one of the model's keys instead of falling back to a value written elsewhere.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from typing import Any, Callable, Mapping

import jax.numpy as jnp

from vaecf.common import VaecfError
from vaecf.config import ConfigError

DEFAULT_OPTIMIZER = 'adam'
# Modules that held built-in models before they moved into vaecf.models: a workdir that
# names one resumes, and serves, with the installed model.
MOVED_MODULES = {'experiments.recvae': 'vaecf.models.recvae',
                 'experiments.hvamp': 'vaecf.models.hvamp'}


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


@dataclasses.dataclass(frozen=True)
class Settings:
  """The config keys a model reads beyond base_config's, and the defaults it starts from
  (model.* keys it adds or overrides, train.* keys it overrides); `datasets` holds the
  model's own settings for a dataset preset, {dataset: {'model': {...}, 'train': {...}}}
  (a schedule counted in epochs that must be rescaled to a dataset's steps)."""
  model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  datasets: Mapping[str, Mapping[str, Mapping[str, Any]]] = dataclasses.field(
      default_factory=dict)


_FACTORIES: dict[str, Callable[[Any, int], Model]] = {}
_SETTINGS: dict[str, Settings] = {}


def register(name: str, *, model: Mapping[str, Any] | None = None,
             train: Mapping[str, Any] | None = None,
             datasets: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None):
  """Decorator: `@register('mymodel', model={'my_knob': 1.0}) def make(config, n_items)`.

  `model` and `train` are the model's config keys with their defaults: the keys it
  adds to config.model (its own knobs) and the base keys it starts from other values.
  `datasets` overrides some of them on a dataset preset: {'ml-1m': {'model': {...},
  'train': {...}}}, applied after the preset (vaecf.presets.compose).
  """
  datasets = {d: dict(v) for d, v in (datasets or {}).items()}
  for d, sections in datasets.items():
    unknown = set(sections) - {'model', 'train'}
    if unknown:
      raise ValueError(f'model {name!r}: datasets[{d!r}] has sections {sorted(unknown)}; '
                       "only 'model' and 'train'")

  def wrap(factory):
    _FACTORIES[name] = factory
    _SETTINGS[name] = Settings(dict(model or {}), dict(train or {}), datasets)
    return factory
  return wrap


def available() -> list[str]:
  return sorted(_FACTORIES)


def settings(name: str) -> Settings:
  if name not in _SETTINGS:
    raise ConfigError(f'unknown model {name!r}; registered: {available()} (a model of your '
                      'own registers itself in the module config.model.module names)')
  return _SETTINGS[name]


def build(config, n_items: int) -> Model:
  name = config.model.name
  declared = settings(name)
  missing = [f'model.{k}' for k in declared.model if k not in config.model]
  if missing:
    raise ConfigError(
        f'model {name!r} reads {", ".join(missing)}, which this config does not have; start '
        f'from its own config, --config=configs/{name}.py:<dataset> (or '
        f'vaecf.presets.compose({name!r}, dataset)), which declares them with their defaults')
  return _FACTORIES[name](config, n_items)


def hidden_dims(config, default):
  return tuple(default if config.model.hidden_dims is None else config.model.hidden_dims)


def import_module(name: str) -> None:
  """Imports a model's module (config.model.module) so that it registers its model.

  The name is resolved as usual and then against the current directory, so
  `experiments.x` works from a checkout whether vaecf runs as `python -m` or through an
  installed console script (which does not put the directory on the path).
  """
  name = MOVED_MODULES.get(name, name)
  if not name:
    return
  try:
    importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name != name.split('.')[0] or os.getcwd() in sys.path:
      raise
    sys.path.insert(0, os.getcwd())
    importlib.import_module(name)


class UntrustedCode(VaecfError, PermissionError):
  """A saved config names a module that opening it would import (run), untrusted."""


def import_saved(config, where, trust_code: bool, asked: str = '') -> None:
  """Imports the module a SAVED config (a workdir's config.json) names, only if trusted.

  The one trust rule of every path that opens a workdir (serving, activity, ensemble,
  tune): a model vaecf installs, or one already registered, needs no import; a module the
  running command's own config named (`asked`) was asked for; any other runs only with
  trust_code, since the folder may come from someone else.
  """
  module = config.model.module
  if not module or module in MOVED_MODULES or config.model.name in _FACTORIES:
    return
  if module != asked and not trust_code:
    raise UntrustedCode(
        f'{where} was trained with model {config.model.name!r} from module {module!r}; '
        'opening it imports and runs that module. Pass trust_code=True (--trust_code on '
        'the command line) only if you trust the code.')
  import_module(module)
