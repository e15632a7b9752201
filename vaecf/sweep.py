"""Parallel sweeps: M models trained at once in one jitted, vmapped step.

Every model starts from the same initial parameters (the single run's init key),
sees the same batches and draws the same dropout/eps noise; only its traced
hyperparameters differ: the beta schedule (`config.sweep.mode` over `config.sweep.caps`),
or any grid of traced knobs (`config.sweep.grid`: the annealing settings, the learning
rate, and each model's own `hparams` such as dropout_rate, weight_decay or RecVAE's
gamma). So model m of a sweep is exactly the single run of `model_config(config, point_m)`
(tests/test_sweep.py), early stopping included: a model whose patience runs out leaves the
step and keeps its state while the others train on. Each phase's step is the single
run's, vmapped over a leading model axis of (parameters, optimizer state, model state,
hyperparameters); the step counter and each batch are shared, and the batch is still
split over 'data'. The epochs are vaecf.loop's, as for a single run; evaluation scores a
batch for all M models in one pass (vaecf.evaluate.evaluate_models). Settings that change
shapes (hidden_dims, latent_dim) cannot share a step: they run as separate sweeps, one per
shape (vaecf.sweep_groups, which the `experiments.sweep` command uses).

It is over 300 lines because the sweep's pieces (the knobs, their config keys and the
checks of a grid's points, the vmapped phase steps and hooks, the M-model scorer and the
loop's trainee) only make sense together, and each is a few lines.
"""
from __future__ import annotations

import functools
import itertools
import logging
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from vaecf import checkpoints, distributed, evaluate as evaluation, input_pipeline, loop, models, steps, train
from vaecf.config import SWEEP_MODES, ConfigError, find_problems, parse_grid, validate
from vaecf.data.types import Split

log = logging.getLogger(__name__)
# The trainer's traced knobs and the config keys that set them; a model's own `hparams`
# are set by config.model.<name>.
TRAIN_KNOBS = {'anneal_cap': 'anneal_cap', 'constant_beta': 'constant_beta',
               'total_anneal_steps': 'total_anneal_steps', 'learning_rate': 'learning_rate'}
MODE_KNOBS = dict(zip(SWEEP_MODES, ('anneal_cap', 'constant_beta', 'total_anneal_steps')))


def _mode_knob(config) -> str:
  """The knob `config.sweep.mode` names (a beta sweep over config.sweep.caps)."""
  if config.sweep.mode not in MODE_KNOBS:
    raise ConfigError(f'config.sweep.mode={config.sweep.mode!r}: use one of {SWEEP_MODES}')
  return MODE_KNOBS[config.sweep.mode]


def grid_points(config) -> list[dict[str, float]]:
  """The sweep's points, in order: the product of `config.sweep.grid` or, when it is
  empty, the knob of `config.sweep.mode` at each of `config.sweep.caps`."""
  grid = parse_grid(config.sweep.grid)
  if not grid:
    grid = {_mode_knob(config): tuple(float(v) for v in config.sweep.caps)}
  names = list(grid)
  return [dict(zip(names, values)) for values in itertools.product(*grid.values())]


def _knob_problem(config, knob: str) -> str | None:
  """Why `knob` cannot be swept at all, whatever its values (None: it can)."""
  if knob in TRAIN_KNOBS:
    return None
  if knob not in config.model:
    numeric = [k for k in config.model if k == 'hidden_dims' or
               config.model.get_type(k) in (int, float)]
    return (f'sweep knob {knob!r} is not a traced hyperparameter of {config.model.name!r} '
            f'nor a setting of its shape: a knob is one of {sorted(TRAIN_KNOBS)} or a '
            f'number of config.model ({", ".join(sorted(numeric))})')
  kind = config.model.get_type(knob)
  if knob == 'hidden_dims':
    if not config.model.hidden_dims:
      return ('a sweep of hidden_dims sets the width of every hidden layer: set '
              'config.model.hidden_dims to one or more layers (e.g. (600,)) so that the '
              f'depth is stated (it is {config.model.hidden_dims!r})')
  elif kind is bool or (kind not in (int, float) and config.model[knob] is not None):
    # None: a number left unset (weight_decay's model default), which a copy with its
    # references resolved no longer types as float
    return f'sweep knob {knob!r}: config.model.{knob}={config.model[knob]!r} is not a number'
  return None


def setting(config, knob: str, value: float) -> int | float:
  """The value a grid's `knob`=`value` gives its config key: a whole number for an integer
  setting (so 8 and 8.0 are one shape) and for hidden_dims' width, else a float. Raises
  ConfigError for a knob that cannot be swept or a value no setting can take."""
  problem = _knob_problem(config, knob)
  if problem:
    raise ConfigError(problem)
  if not math.isfinite(value):
    raise ConfigError(f'{knob}={value!r}: not a finite number')
  if knob == 'total_anneal_steps':
    return int(round(value))  # a count of steps, rounded as it always was
  if knob in TRAIN_KNOBS or (knob != 'hidden_dims' and (
      config.model.get_type(knob) is float or config.model[knob] is None)):
    return float(value)
  if value != round(value) or value < 1:
    raise ConfigError(f'sweep knob {knob!r}={value:g}: a shape must be a whole number >= 1')
  return int(round(value))


def model_config(config, point):
  """The single-run config equivalent to the sweep's model at `point` ({knob: value}, or
  a bare value of `config.sweep.mode`'s knob); `hidden_dims=v` sets every hidden layer
  to width v."""
  if not isinstance(point, dict):
    point = {_mode_knob(config): point}
  c = config.copy_and_resolve_references()
  for knob, value in point.items():
    v = setting(config, knob, value)
    if knob in TRAIN_KNOBS:
      c.train[TRAIN_KNOBS[knob]] = v
    else:
      c.model[knob] = (v,) * len(config.model.hidden_dims) if knob == 'hidden_dims' else v
  return c


def _label(point: dict) -> str:
  return ', '.join(f'{k}={v if isinstance(v, int) else float(v)!r}' for k, v in point.items())


def check_points(config, points: list[dict]) -> None:
  """Refuses, before anything is read or written, a sweep whose models could not all be
  trained as single runs: no points or points of other knobs, a knob that cannot be
  swept, a point whose config `vaecf.config.validate` would refuse (each problem with its
  point, all at once), and points that repeat once cast (they would train one model twice).
  Whether each knob is traced by the model's step is `check_traceable`'s (it needs the
  model)."""
  validate(config)
  where = 'the sweep' + (f' (sweep.grid={config.sweep.grid!r})' if config.sweep.grid else '')
  if not points or any(set(p) != set(points[0]) for p in points):
    raise ConfigError(f'{where} is empty (config.sweep.caps or config.sweep.grid), or its '
                      'points set different knobs: nothing to sweep')
  # A knob that cannot be swept is named once, not once per point.
  found = [p for p in (_knob_problem(config, k) for k in points[0]) if p]
  seen: dict[tuple, list[int]] = {}
  for i, point in enumerate(points if not found else []):
    at = f'point {i + 1} ({_label(point)})'
    cast = {}
    for knob, value in point.items():
      try:
        cast[knob] = setting(config, knob, value)
      except ConfigError as e:
        found.append(f'{at}: {e}')
    if len(cast) == len(point):
      found += [f'{at}: {p}' for p in find_problems(model_config(config, point))]
      seen.setdefault(tuple(cast.items()), []).append(i + 1)
  found += [f'points {", ".join(map(str, idx))} are one model ({_label(dict(key))}): a '
            'sweep would train it again for each' for key, idx in seen.items()
            if len(idx) > 1]
  if found:
    raise ConfigError(f'{where} cannot run:\n  ' + '\n  '.join(found))


def check_traceable(config, model: models.Model, points: list[dict]) -> None:
  """Every knob must be traced by the step: a knob that is not would train M equal
  models, or need other shapes; say so before anything runs."""
  traced = set(TRAIN_KNOBS) | set(model.hparams)
  for knob in points[0]:
    if knob not in traced:
      raise ConfigError(
          f'sweep knob {knob!r} is not a traced hyperparameter of {model.name!r} (traced: '
          f'{sorted(traced)}); settings that change shapes, such as hidden_dims or '
          'latent_dim, run as separate sweeps (python -m experiments.sweep makes one per '
          'shape)')
    if knob == 'learning_rate' and model.optimizers is not None:
      raise ConfigError(f'{model.name!r} declares its own optimizers, whose learning rates '
                        'the config does not set: learning_rate cannot be swept')


def hparams(config, n_items: int, points: list[dict] | None = None) -> dict[str, jax.Array]:
  """Each model's traced hyperparameters, stacked on a leading model axis: {name: [M]}."""
  points = grid_points(config) if points is None else points
  per_model = []
  for point in points:
    c = model_config(config, point)
    per_model.append(steps.hparams_from_config(c, models.build(c, n_items)))
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


def resolve_models_per_pass(value: int | None, platform: str | None = None) -> int | None:
  """A command's --models_per_pass: unset picks by backend, 0 is all models in one vmap.

  Unset: 1 on a CPU, where XLA runs the batched gathers, scatters and matmuls of a
  vmapped step slower than a loop of single-model ones (README, "Parallel sweep"), and
  one vmap over all models on an accelerator, where one model does not fill the device.
  The results are the same either way.
  """
  if value is None:
    platform = platform or jax.default_backend()
    return 1 if platform == 'cpu' else None
  if value < 0:
    raise ConfigError(f'models_per_pass={value}: use 0 (all in one vmap) or a positive count')
  return value or None


def _per_model(states):
  return {k: v for k, v in states.items() if k != 'step'}


def _vmap_step(single, models_per_pass, donate):
  """A single run's step(state, batch, hparams) over the model axis of states/hparams."""
  def step(states, batch, hparams_M):
    def one(rest, hp):
      new, metrics = single({'step': states['step'], **rest}, batch, hp)
      return _per_model(new), metrics
    rest, metrics = over_models(one, models_per_pass)(_per_model(states), hparams_M)
    return {'step': states['step'] + 1, **rest}, metrics
  return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_sweep_steps(model: models.Model, optimizer, mesh, seed: int, *,
                     models_per_pass: int | None = None, donate: bool = True) -> dict:
  """{phase: step(states, batch, hparams_M) -> (states, metrics_M)}: each phase's single
  step over the models. The step counter is shared, so the dropout and eps draws are made
  once per step."""
  singles = steps.make_phase_steps(model, optimizer, mesh, seed, donate=False)
  return {name: _vmap_step(fn, models_per_pass, donate) for name, fn in singles.items()}


def make_sweep_step(model: models.Model, optimizer, mesh, seed: int, *,
                    models_per_pass: int | None = None, donate: bool = True):
  """The one step of a single-phase model over the models."""
  if len(model.phases) != 1:
    raise ValueError(f'{model.name!r} has {len(model.phases)} phases: use make_sweep_steps')
  return next(iter(make_sweep_steps(model, optimizer, mesh, seed,
                                    models_per_pass=models_per_pass, donate=donate).values()))


def make_sweep_after_fns(model: models.Model) -> dict:
  """Each phase's `after` hook over the models."""
  out = {}
  for p in model.phases:
    if p.after is not None:
      single = steps.make_after_fn(p)
      out[p.name] = jax.jit(lambda states, single=single: {
          'step': states['step'], **jax.vmap(lambda rest: _per_model(single(
              {'step': states['step'], **rest})))(_per_model(states))})
  return out


def stack_states(state, n_models: int):
  """One shared step counter; M copies of everything else (params, optimizer and model
  state)."""
  copies = lambda t: jax.tree.map(lambda a: jnp.broadcast_to(a, (n_models, *a.shape)), t)
  return {'step': state['step'], **{k: copies(v) for k, v in _per_model(state).items()}}


def _indices(active: list[bool]) -> np.ndarray | None:
  """The models still training, or None when all are (a host array: every process of a
  multi-host run passes the same one)."""
  return None if all(active) else np.asarray([i for i, a in enumerate(active) if a])


@jax.jit
def _take(tree, idx):
  return jax.tree.map(lambda a: a[idx], tree)


@functools.partial(jax.jit, donate_argnums=(0,))
def _put(tree, idx, part):
  return jax.tree.map(lambda a, p: a.at[idx].set(p), tree, part)


@functools.partial(jax.jit, donate_argnums=(0,))
def _keep_best(best_M, params_M, improved_M):
  def pick(b, p):
    return jnp.where(improved_M.reshape((-1,) + (1,) * (p.ndim - 1)), p, b)
  return jax.tree.map(pick, best_M, params_M)


def make_sweep_score_fn(model: models.Model, mesh, models_per_pass: int | None = None):
  """score(params_M, batch) -> logits [M, B, I]: every model's scores of one batch."""
  single = steps.make_score_fn(model, mesh)
  return jax.jit(lambda params_M, x: over_models(lambda p: single(p, x), models_per_pass)(
      params_M))


def make_sweep_scorer(model: models.Model, mesh, eval_batch_size: int,
                      models_per_pass: int | None = None):
  """(score_fn factory, batch): score_fn(params_M)(csr) -> logits [M, B, I], one pass."""
  n = mesh.devices.size
  batch = -(-eval_batch_size // n) * n
  score = make_sweep_score_fn(model, mesh, models_per_pass)

  def for_params(params_M):
    def score_fn(x):
      logits = score(params_M, input_pipeline.global_batch(x, mesh, -(-x.shape[0] // n)))
      return logits[:, :x.shape[0]]
    return score_fn
  return for_params, batch


def _warn_unreachable(config, points, n_train: int) -> None:
  """Caps above the beta the run's last step reaches would train identical models."""
  t = config.train
  last = t.epochs * math.ceil(n_train / t.batch_size) / t.total_anneal_steps
  caps = [p['anneal_cap'] for p in points if set(p) == {'anneal_cap'}]
  if sum(v >= last for v in caps) > 1:
    log.warning('beta only reaches %.4g by the last step (total_anneal_steps=%d), so the '
                'caps >= that train identical models; lower train.total_anneal_steps '
                '(e.g. to the run\'s number of steps, as experiments.select_beta does)',
                last, t.total_anneal_steps)


class _Sweep:
  """The loop's trainee for M models (vaecf.loop's protocol): the carry is every model's
  state and its best-so-far parameters, since the models peak at other epochs; the
  checkpoint (only the latest is kept) holds both.

  Models that stopped early are left out of the step (the M' still training are one
  smaller sweep, compiled once per M'), so they cost nothing and keep their state. The
  M' copies live beside the M states for the epoch: (M + M') / M of their memory.
  """

  def __init__(self, config, split, mesh, model, optimizer, init_key, points, models_per_pass):
    self.config, self.split, self.mesh, self.model = config, split, mesh, model
    self.optimizer, self.init_key, self.points = optimizer, init_key, points
    self.select, self.metrics = config.eval.select, tuple(config.eval.metrics)
    self.key = checkpoints.best_key(self.select)
    # Rows and lines are labelled by the first knob whose value differs between models.
    varying = [k for k in points[0] if len({p[k] for p in points}) > 1]
    self.primary = (varying or list(points[0]))[0]
    self.tags = ['/'.join(f'{p[k]:g}' for k in varying or [self.primary]) for p in points]
    self.labels = [{'model': i, 'sweep_value': p[self.primary],
                    **({'sweep_point': p} if len(p) > 1 else {})} for i, p in enumerate(points)]
    self.phases = model.phases
    self.phase_steps = make_sweep_steps(model, optimizer, mesh, config.train.seed,
                                        models_per_pass=models_per_pass)
    self.after_fns = make_sweep_after_fns(model)
    self.hparams = hparams(config, split.n_items, points)
    self.for_params, self.eval_batch = make_sweep_scorer(model, mesh,
                                                         config.train.eval_batch_size,
                                                         models_per_pass)

  def init(self):
    n = len(self.points)
    states = jax.jit(lambda k: stack_states(steps.init_state(self.model, self.optimizer, k), n),
                     out_shardings=distributed.replicated(self.mesh))(self.init_key)
    return {'states': states, 'best_params': jax.jit(lambda p: jax.tree.map(jnp.copy, p))(
        states['params'])}

  def step_of(self, carry):
    return carry['states']['step']

  def take(self, carry, active):
    states, idx = carry['states'], _indices(active)
    return states if idx is None else {'step': states['step'],
                                       **_take(_per_model(states), idx)}

  def put(self, carry, part, active):
    idx = _indices(active)
    if idx is not None:
      part = {'step': part['step'], **_put(_per_model(carry['states']), idx, _per_model(part))}
    return {**carry, 'states': part}

  def steps(self, active):
    idx = _indices(active)
    hp = self.hparams if idx is None else _take(self.hparams, idx)
    # Partials (train._Single's reason): each epoch's are new objects of the same steps.
    return {name: functools.partial(fn, hparams_M=hp) for name, fn in self.phase_steps.items()}

  def _evaluate(self, params_M, which, n_models):
    return evaluation.evaluate_models(self.for_params(params_M), *self.split.heldout(which),
                                      n_models, metrics=self.metrics,
                                      batch_size=self.eval_batch)

  def validate(self, carry, active):
    idx, params = _indices(active), carry['states']['params']
    return self._evaluate(params if idx is None else _take(params, idx), 'val', sum(active))

  def keep_best(self, carry, improved):
    return {**carry, 'best_params': _keep_best(carry['best_params'], carry['states']['params'],
                                               jnp.asarray(improved))}

  def save(self, mngr, epoch, carry, record, val):
    del val  # no metrics: only the latest is kept, and it holds the best params
    mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(carry),
                                             record=ocp.args.JsonSave(record)))

  def best_of_record(self, record):
    return list(record['best'])

  def test(self, mngr, carry, best):
    return self._evaluate(carry['best_params'], 'test', len(self.points))

  def epoch_line(self, rows, best, eta):
    r = next(row for row in rows if row is not None)
    return (f'epoch {r["epoch"]}/{self.config.train.epochs} step {r["step"]} | '
            f'{r["seconds"]:.1f}s | val {self.select} ' + ' '.join(
                f'{tag}:stopped' if row is None else f'{tag}:{row.get(self.key, math.nan):.4f}'
                for tag, row in zip(self.tags, rows)))

  def results(self, best, tests, seconds):
    c, key = self.config, self.key
    return {
        'model': c.model.name, 'dataset': c.data.name,
        'mode': c.sweep.mode if not c.sweep.grid else 'grid', 'knob': self.primary,
        'values': [p[self.primary] for p in self.points], 'points': self.points,
        'select': self.select,
        'models': [{'index': i, 'value': p[self.primary], 'point': p,
                    'best_epoch': b['epoch'], 'best_step': b['step'], key: b[key],
                    'select': self.select,
                    **({'stopped_after_epoch': b['stopped_after']} if 'stopped_after' in b
                       else {}),
                    **({'stopped_by': b['stopped_by']} if 'stopped_by' in b else {}),
                    **({'test': t.summary(), 'n_test_users': t.n_users} if t else {})}
                   for i, (p, b, t) in enumerate(zip(self.points, best, tests))],
        'test_eval_seconds': seconds,
        'devices': self.mesh.devices.size, 'platform': jax.devices()[0].platform,
    }


def train_sweep(config, workdir: str | Path, *, split: Split | None = None,
                models_per_pass: int | None = None, stop_after_epoch: int | None = None,
                points: list[dict] | None = None, score_test: bool = True,
                stop_rule=None) -> dict:
  """Trains (or resumes) the sweep in `workdir`; returns and writes `sweep.json`.

  `points` ([{knob: value}], one per model) replaces the config's grid (a tuner's
  round); `score_test=False` leaves the test users unscored; `stop_rule` is loop.run's
  (a tuner's rule that stops hopeless points: vaecf.tools.halving).

  metrics.jsonl holds one row per (epoch, model) with 'model' and 'sweep_value' (and
  'sweep_point' for a grid of several knobs); the latest checkpoint holds every model's
  state and best-so-far parameters. Each model's best epoch is by `config.eval.select`,
  whose value its record holds under 'val_<select>' (and the name under 'select').
  """
  points = grid_points(config) if points is None else [dict(p) for p in points]
  check_points(config, points)

  def check(model):  # before the workdir is touched: a sweep that cannot run writes nothing
    check_traceable(config, model, points)
    if set(points[0]) <= {'anneal_cap', 'constant_beta'} and not model.uses_beta and len(
        points) > 1:
      log.warning('%s ignores beta: every model of this sweep trains identically', model.name)
  wd, split, mesh, model, optimizer, init_key = train.setup(config, workdir, split, check=check)
  try:
    _warn_unreachable(config, points, split.train.shape[0])
    trainee = _Sweep(config, split, mesh, model, optimizer, init_key, points, models_per_pass)
    return loop.run(wd, split, trainee, loop.Plan.from_config(config),
                    stop_after_epoch=stop_after_epoch, results_file='sweep.json',
                    score_test=score_test, stop_rule=stop_rule)
  finally:
    wd.close()


def restore_best_params(workdir: str | Path, config, n_items: int, mesh,
                        n_models: int | None = None):
  """The best-by-validation parameters of every model of a sweep: [M, ...] (M, unless
  given: the models its latest checkpoint records, since a tuner's round does not put
  its points in the config)."""
  mngr = checkpoints.manager(Path(workdir), config.train.keep_latest)
  if mngr.latest_step() is None:
    raise checkpoints.CheckpointError(f'{workdir} holds no sweep checkpoint')
  if n_models is None:
    n_models = len(checkpoints.record_at(mngr, mngr.latest_step())['best'])
  model = models.build(config, n_items)
  optimizer = steps.make_optimizer(config)
  state = checkpoints.abstract_replicated(
      lambda: stack_states(steps.init_state(model, optimizer, jax.random.key(0)), n_models),
      mesh)
  abstract = {'states': state, 'best_params': state['params']}
  restored, _ = checkpoints.restore(mngr, mngr.latest_step(), abstract)
  return restored['best_params']
