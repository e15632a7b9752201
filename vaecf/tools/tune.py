"""Hyperparameters chosen on validation users, for every model, by grids that refine.

  vaecf-tune --config=configs/multvae.py:ml-1m --config.data.path=PATH/ml-1m \
      --workdir=DIR [--models=multvae,multdae,ease,wmf,slim,cdae] [--budget=16]

Per model, each knob of its space in turn (coordinate-wise, the others held at the best
point so far): a coarse grid first, then, along that knob, one step past the edge when
the best value lies on it (a grid edge is never the answer unless it is the knob's hard
bound), else the midpoints between the best value and its neighbours, until they are
closer than the knob's resolution. The search ends when a whole cycle over the knobs
proposes nothing new, or after `--budget` points.
- Trained models (multvae, multdae, any registered model): each round is one vmapped
  sweep over the round's points (vaecf.sweep), its test users unscored, the epoch of each
  point chosen by the validation metric eval.select (NDCG@100 by default; train.patience
  stops each point on its own, and the round when all have stopped; `--halving_eta`
  also stops, at rungs, the points that cannot catch the best: vaecf.tools.halving).
- Baselines: each point is a fit on the training users, scored on validation users.
Then the chosen point alone is scored on the test users, once.

Writes DIR/tune.json: every point tried (knob values, validation score, best epoch,
seconds), each model's choice and test metrics, and wall times; DIR/tune.md the table;
DIR/tune_<model>.png the validation score over each knob. Every round is written when it
ends and each sweep resumes itself, so a killed tune rerun with the same command
continues and ends with the same choice. The chosen baselines are saved in vaecf's
baseline format (DIR/<model>/best) and the chosen trained models stay in their round's
sweep, so both can be served.

It is over 300 lines because the search, the model spaces, the two ways of scoring a
round (a sweep, baseline fits), the table, the plot and the command are one tool.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from vaecf import (baselines, checkpoints, console, distributed, evaluate, models, steps, sweep,
                   train)
from vaecf.common import atomic_write
from vaecf.config import ConfigError, validate
from vaecf.tools import halving, tune_records
from vaecf.data import load_split
from vaecf.workdir import Workdir, WorkdirError, load_config, read_metrics, split_signature

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Knob:
  """One hyperparameter's search: where it starts, its scale, hard bounds and resolution
  (a ratio for log knobs, a difference for linear ones)."""
  name: str
  start: tuple[float, ...]
  scale: str = 'log'
  lo: float = -math.inf
  hi: float = math.inf
  resolution: float = 1.5
  integer: bool = False

  def _cast(self, v: float) -> float:
    v = min(max(v, self.lo), self.hi)
    return float(round(v)) if self.integer else float(v)

  def beyond(self, edge: float, inner: float) -> float:
    """One step past `edge`, as far as `inner` is on the other side."""
    if self.scale == 'log':
      return self._cast(edge * (edge / inner))
    return self._cast(edge + (edge - inner))

  def between(self, a: float, b: float) -> float:
    return self._cast(math.sqrt(a * b) if self.scale == 'log' else (a + b) / 2)

  def close(self, a: float, b: float) -> bool:
    if self.scale == 'log':
      return max(a, b) / min(a, b) <= self.resolution
    return abs(a - b) <= self.resolution


def propose(knob: Knob, tried: dict[float, float], seen: set[float] = frozenset()
            ) -> list[float]:
  """The next values of `knob` given {value: validation score} along it (the other knobs
  at the best point): past the edge if the best is on one, else the midpoints to its
  neighbours while they are farther than the resolution. With fewer than two values on
  this line: the start grid, or (when other knobs have moved since) the nearest values
  `seen` before on each side. [] when the knob has converged."""
  xs = sorted(tried)
  if len(xs) < 2:
    if len(seen | set(xs)) < 2:  # never searched yet
      return sorted(set(knob.start) - set(xs))
    here = xs[0]
    below, above = [v for v in seen if v < here], [v for v in seen if v > here]
    return sorted({v for v in (max(below, default=None), min(above, default=None))
                   if v is not None})
  i = max(range(len(xs)), key=lambda j: (tried[xs[j]], -j))  # ties: the smaller value
  if i == 0 and xs[0] > knob.lo:
    out = [knob.beyond(xs[0], xs[1])]
  elif i == len(xs) - 1 and xs[-1] < knob.hi:
    out = [knob.beyond(xs[-1], xs[-2])]
  else:
    out = [knob.between(xs[i], xs[j]) for j in (i - 1, i + 1)
           if 0 <= j < len(xs) and not knob.close(xs[i], xs[j])]
  return sorted({v for v in out if v not in tried})


def search(knobs: list[Knob], evaluate_round, budget: int, base: dict[str, float],
           rounds: list[dict] | None = None, on_round=None,
           metric: str = checkpoints.BEST_METRIC) -> tuple[dict, list[dict]]:
  """Coordinate-wise refinement from `base`; evaluate_round(points, done) -> [{metric:
  ...}], `done` being the rounds scored before these points (a stop rule's incumbent).

  `rounds` replays rounds already done (a resumed tune): a recorded round with the same
  points is taken as it is instead of being evaluated again. on_round(rounds) runs after
  each round. Returns (best point, every round).
  """
  key = lambda p: json.dumps(p, sort_keys=True)
  scores: dict[str, float] = {}
  best, replay, n_round, idle, out = dict(base), iter(rounds or []), 0, 0, []
  while knobs and idle < len(knobs) and len(scores) < budget:
    knob = knobs[n_round % len(knobs)]
    n_round += 1
    along, seen = {}, set()
    for k, s in scores.items():
      p = json.loads(k)
      seen.add(p[knob.name])
      if all(p[n] == v for n, v in best.items() if n != knob.name):
        along[p[knob.name]] = s
    points = [{**best, knob.name: v} for v in propose(knob, along, seen)]
    points = [p for p in points if key(p) not in scores][:budget - len(scores)]
    if not points:
      idle += 1
      continue
    idle = 0
    recorded = next(replay, None)
    if recorded is not None and recorded['points'] == points:
      round_ = recorded
    elif recorded is not None and recorded['points'] == points[:len(recorded['points'])]:
      # An earlier call's budget cut this round (only ever the last): evaluate the rest.
      replay = iter(())
      t0 = time.perf_counter()
      details = evaluate_round(points[len(recorded['points']):], out + [recorded])
      round_ = {**recorded, 'points': points,
                'scores': recorded['scores'] + [d[metric] for d in details],
                'details': recorded['details'] + details,
                'seconds': recorded['seconds'] + time.perf_counter() - t0}
    else:
      replay = iter(())  # the history diverges here: evaluate anew from now on
      t0 = time.perf_counter()
      details = evaluate_round(points, list(out))
      round_ = {'knob': knob.name, 'points': points, 'scores': [d[metric] for d in details],
                'details': details, 'seconds': time.perf_counter() - t0}
    out.append(round_)
    for p, sc in zip(points, round_['scores']):
      scores[key(p)] = sc
    best = json.loads(max(scores, key=lambda k: (scores[k], k)))
    if on_round is not None and round_ is not recorded:
      on_round(out)
  return best, out


class _MoreWanted(Exception):
  pass


def converged(knobs: list[Knob], rounds: list[dict], base: dict[str, float]) -> bool:
  """Whether the search that made `rounds` had nothing left to propose (it stopped by
  converging, not on its budget): its replay with no budget asks for no new point."""
  def more(points, done):
    raise _MoreWanted
  try:
    search(knobs, more, 10 ** 9, base, rounds)
  except _MoreWanted:
    return False
  return True


# -- spaces --------------------------------------------------------------------------------

def trained_space(config, model: models.Model) -> list[Knob]:
  """The traced knobs a sweep can vary, with starting grids around the paper's values."""
  lr = Knob('learning_rate', (3e-4, 1e-3, 3e-3), lo=1e-5, hi=3e-2)
  if config.model.name == 'multvae':
    return [Knob('anneal_cap', (0.1, 0.2, 0.4), 'linear', 0.0, 2.0, 0.05),
            Knob('dropout_rate', (0.3, 0.5, 0.7), 'linear', 0.0, 0.9, 0.05), lr]
  if config.model.name == 'multdae':
    return [Knob('dropout_rate', (0.3, 0.5, 0.7), 'linear', 0.0, 0.9, 0.05),
            Knob('weight_decay', (5e-6, 2e-5, 8e-5), lo=1e-9, hi=1.0), lr]
  # A probability is searched on its own line (0.5 * 3 is none); above 0, as RaCT's
  # critic needs dropped items to learn from.
  dropout = Knob('dropout_rate', (0.3, 0.5, 0.7), 'linear', 0.05, 0.9, 0.05)
  out = [dropout if k == 'dropout_rate' else
         Knob(k, (v / 3, v, v * 3), lo=0.0) if v > 0 else
         Knob(k, (v - 0.1, v, v + 0.1), 'linear', resolution=0.02)
         for k, v in model.hparams.items()]
  return out + ([lr] if model.optimizers is None else [])


BASELINE_SPACES = {
    'popularity': [],
    'ease': [Knob('lam', (50.0, 200.0, 800.0), lo=1e-3)],
    # Steck's p = 0.33 (ML-20M, Netflix) sits inside; p -> 1 makes Lambda unbounded, and
    # 0.9 already loses on ML-1M. lam is far below EASE's: Lambda's p/(1-p) diag(G) term
    # carries most of the regularisation.
    'edlae': [Knob('lam', (30.0, 100.0, 300.0), lo=1e-3),
              Knob('p', (0.25, 0.5, 0.67), 'linear', 0.0, 0.9, 0.05)],
    'wmf': [Knob('lam', (10.0, 100.0), lo=1e-3), Knob('alpha', (4.0, 29.0), lo=0.0)],
    'slim': [Knob('l1', (1.0, 10.0), lo=1e-4), Knob('l2', (100.0, 500.0), lo=1e-2)],
    'cdae': [Knob('corruption', (0.2, 0.5), 'linear', 0.0, 0.9, 0.1)],
}
BASELINE_FIXED = {'wmf': {'factors': 200, 'iters': 15, 'cg_steps': 3}}


def base_point(knobs: list[Knob]) -> dict[str, float]:
  """Where the search starts: each knob's middle start value."""
  return {k.name: k.start[len(k.start) // 2] for k in knobs}


# -- one model ------------------------------------------------------------------------------

def tuned_config(config, model_name: str, split):
  """The config a trained model is tuned under: beta annealed to its cap over the run
  (the paper's slope never reaches a cap on small data), patience to end rounds early."""
  c = config.copy_and_resolve_references()
  c.model.name = model_name
  steps_per_epoch = -(-split.train.shape[0] // c.train.batch_size)
  c.train.total_anneal_steps = max(1, c.train.epochs * steps_per_epoch)
  return c


def tune_trained(config, name: str, workdir: Path, split, budget: int, rounds, on_round,
                 models_per_pass: int | None = None, rule: halving.Rule | None = None):
  c = tuned_config(config, name, split)
  metric = checkpoints.best_key(c.eval.select)
  train.import_model_module(c)
  model = models.build(c, split.n_items)
  knobs = trained_space(c, model)

  def evaluate_round(points, done):
    # Named by its points: a killed round's sweep is found again and resumes itself.
    digest = hashlib.sha1(json.dumps(points, sort_keys=True).encode()).hexdigest()[:10]
    sub = workdir / name / f'round-{digest}'
    extra = {} if rule is None else {'stop_rule': halving.stop_rule(
        rule, c.train.epochs, _incumbent_history(workdir, done, metric))}
    res = sweep.train_sweep(c, sub, split=split, points=points, score_test=False,
                            models_per_pass=models_per_pass, **extra)
    # Each epoch's wall time once (models that stopped early have no rows after it).
    seconds = sum({r['epoch']: r['seconds'] for r in read_metrics(sub)}.values())
    return [{metric: m[metric], 'best_epoch': m['best_epoch'],
             'workdir': tune_records.relative(workdir, sub), 'index': m['index'],
             'sweep_seconds': seconds, **_stop_of(m)} for m in res['models']]
  best, done = search(knobs, evaluate_round, budget, base_point(knobs), rounds, on_round,
                      metric)
  detail = _detail_of(best, done)
  done_searching = converged(knobs, done, base_point(knobs))
  # Test once: the chosen model's best-by-validation parameters, from its round's sweep.
  score_fn, batch = _sweep_member_scorer(c, model, split.n_items, detail, workdir)
  t0 = time.perf_counter()
  test = evaluate.evaluate(score_fn, *split.heldout('test'), metrics=c.eval.metrics,
                           batch_size=batch)
  return best, done, {'test': test.summary(), 'n_test_users': test.n_users,
                      'best_epoch': detail['best_epoch'], 'workdir': detail['workdir'],
                      'index': detail['index'], 'test_seconds': time.perf_counter() - t0,
                      'converged': done_searching,
                      'fixed': {'total_anneal_steps': c.train.total_anneal_steps,
                                'epochs': c.train.epochs, 'patience': c.train.patience}}


def _incumbent_history(folder: Path, done: list[dict], metric: str) -> list | None:
  """The validation curve of the best point of the rounds `done` (the search's choice so
  far), read from its round's sweep: the stop rule's yardstick. None before any round."""
  scored = [(s, json.dumps(p, sort_keys=True), d) for r in done
            for p, s, d in zip(r['points'], r['scores'], r['details'])]
  if not scored:
    return None
  _, _, detail = max(scored, key=lambda t: t[:2])
  rows = read_metrics(tune_records.resolve(folder, detail['workdir']))
  return halving.history_of(rows, detail['index'], metric)


def _stop_of(m: dict) -> dict:
  """Where and why a round's point stopped before train.epochs (none: it did not)."""
  if 'stopped_after_epoch' not in m:
    return {}
  return {'stopped_after_epoch': m['stopped_after_epoch'],
          'stopped_by': m.get('stopped_by', 'patience')}


def _sweep_member_scorer(c, model, n_items: int, detail: dict, folder: Path):
  """(score_fn, batch size) of model `detail['index']` of the sweep in
  `detail['workdir']` (a round grown by a larger budget holds points of two), at its best
  validation epoch."""
  mesh = distributed.make_mesh()
  params_M = sweep.restore_best_params(tune_records.resolve(folder, detail['workdir']), c,
                                       n_items, mesh)
  params = jax.tree.map(lambda a: a[detail['index']], params_M)
  for_params, batch = steps.make_scorer(model, mesh, c.train.eval_batch_size)
  return for_params(params), batch


def finished(state: dict, name: str, workdir) -> dict:
  """The tune.json entry of a model whose tune finished; an error naming those that did."""
  entry = state['models'].get(name)
  if entry is None or 'chosen' not in entry:
    done = [n for n, e in state['models'].items() if 'chosen' in e]
    raise WorkdirError(f'{workdir} holds no finished tune of {name!r}; finished: {done}')
  return entry


def chosen_scorer(name: str, workdir: str | Path, split, state: dict | None = None, *,
                  trust_code: bool = False, asked: str = ''):
  """(score_fn, batch size) of the point a finished tune in `workdir` chose for `name`,
  on `split` (the tune's own): a saved baseline, or a trained model from its round.
  `state` is the folder's tune.json when the caller has read it already. A round whose
  config names a model module is opened only as models.import_saved allows (`asked`: the
  module the calling command's own config named)."""
  workdir = Path(workdir)
  if state is None:
    state = tune_records.read_state(workdir)
  entry = finished(state, name, workdir)
  if name in baselines.NAMES:
    fitted, item_ids = baselines.load_fitted(workdir / name / 'best')
    if not np.array_equal(item_ids.astype(str), split.item_ids.astype(str)):
      raise WorkdirError(f'{workdir}/{name}/best was fitted on other items than this split '
                         f'({len(item_ids)} vs {split.n_items}): pass the tune\'s config')
    return fitted.score_fn, 2000
  detail = _detail_of(entry['chosen'], entry['rounds'])
  round_dir = tune_records.resolve(workdir, detail['workdir'])
  diffs = Workdir(round_dir).split_diff(split)
  if diffs:
    raise WorkdirError(f'{round_dir} was trained on another split than this one:\n  ' +
                       '\n  '.join(diffs) + '\npass the tune\'s config and data')
  c = load_config(round_dir)  # the config the round trained under
  models.import_saved(c, round_dir, trust_code, asked)
  model = models.build(c, split.n_items)
  return _sweep_member_scorer(c, model, split.n_items, detail, workdir)


def _round_of(point, rounds):
  for r in rounds:
    if point in r['points']:
      return r
  raise KeyError(point)


def _detail_of(point, rounds):
  r = _round_of(point, rounds)
  return r['details'][r['points'].index(point)]


def tune_baseline(name: str, workdir: Path, split, budget: int, rounds, on_round,
                  eval_config):
  knobs = BASELINE_SPACES[name]
  select, metric = eval_config.select, checkpoints.best_key(eval_config.select)
  fixed = BASELINE_FIXED.get(name, {})
  val_set = split.heldout('val')

  def evaluate_round(points, done):
    out = []
    for p in points:
      t0 = time.perf_counter()
      fitted = baselines.fit(name, split.train, {**fixed, **p}, validation=val_set)
      t1 = time.perf_counter()
      val = evaluate.evaluate(fitted.score_fn, *val_set, metrics=eval_config.metrics).summary()
      log.info('%s %s: val %s %.4f (fit %.1fs)', name, p, select, val[select], t1 - t0)
      out.append({metric: val[select], 'fit_seconds': t1 - t0,
                  'eval_seconds': time.perf_counter() - t1})
    return out
  best, done = search(knobs, evaluate_round, budget, base_point(knobs), rounds, on_round,
                      metric)
  done_searching = converged(knobs, done, base_point(knobs))
  t0 = time.perf_counter()
  fitted = baselines.fit(name, split.train, {**fixed, **best}, validation=val_set)
  baselines.save(workdir / name / 'best', name, fitted.hparams, fitted.arrays, split.item_ids,
                 {**fitted.info, 'tuned_point': best})
  test = evaluate.evaluate(fitted.score_fn, *split.heldout('test'), metrics=eval_config.metrics)
  return best, done, {'test': test.summary(), 'n_test_users': test.n_users,
                      'hparams': fitted.hparams, 'converged': done_searching,
                      'refit_and_test_seconds': time.perf_counter() - t0}


# -- the command ------------------------------------------------------------------------------

def run(config, workdir: str | Path, model_names: list[str], budget: int, *, split=None,
        stop_after_rounds: int | None = None, models_per_pass: int | None = None,
        rule: halving.Rule | None = None) -> dict:
  """Tunes each model in turn (resuming what DIR/tune.json holds); returns tune.json.

  `stop_after_rounds` ends after that many new rounds, as a kill would (tests);
  `models_per_pass` is the sweep's (1 is fastest on a CPU); `rule` stops a trained
  round's hopeless points at rungs (vaecf.tools.halving; None: patience alone).
  """
  check_request(config, model_names, budget, models_per_pass, rule)
  workdir = Path(workdir)
  # Checked before the data is read, then again under the lock (another command may have
  # written the folder meanwhile).
  state = tune_records.read_state(workdir)
  tune_records.check_select(state, config.eval.select, workdir)
  if split is None:
    split, _ = load_split(config.data)
  records = {name: tune_records.config_record(
      config if name in baselines.NAMES else tuned_config(config, name, split),
      name in baselines.NAMES) for name in model_names}
  if rule is not None:  # a trained model's points score as far as the rule lets them train
    for name in model_names:
      if name not in baselines.NAMES:
        records[name]['tune_flags'] = rule.record()
  tune_records.check(workdir, state, split, records)
  lock = tune_records.lock(workdir)  # held until this command ends
  try:
    state = tune_records.read_state(workdir)  # what another command finished is kept
    tune_records.check_select(state, config.eval.select, workdir)
    tune_records.check(workdir, state, split, records)
    return _run(config, workdir, state, split, model_names, budget, records,
                stop_after_rounds, models_per_pass, rule)
  finally:
    lock.close()


def check_request(config, model_names, budget, models_per_pass, rule=None) -> None:
  """Refuses what this tune cannot do, before any data is read or file written."""
  validate(config)
  problems = []
  if rule is not None:
    problems += halving.problems(rule.eta, rule.min_epochs)
  if not model_names or len(set(model_names)) != len(model_names):
    problems.append(f'--models={",".join(model_names)}: name each model once')
  if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
    problems.append(f'--budget={budget!r}: an integer >= 1 (points tried per model)')
  if models_per_pass is not None and models_per_pass < 0:
    problems.append(f'--models_per_pass={models_per_pass}: 0 (all), k >= 1, or unset')
  if config.sweep.grid:
    problems.append(f'config.sweep.grid={config.sweep.grid!r}: a tune searches its own '
                    'grids (the knobs of each model); the grid is read by vaecf-sweep only')
  train.import_model_module(config)  # the command's own config named it: asked for
  for name in model_names:
    if name in baselines.NAMES:
      continue
    if name not in models.available():
      problems.append(f'unknown model {name!r}: one of {sorted(baselines.NAMES)} or '
                      f'{models.available()}')
      continue
    c = config.copy_and_resolve_references()
    c.model.name = name
    try:
      model = models.build(c, 2)  # a stand-in item count: only its knobs are read
    except ValueError as e:  # ConfigError, or a factory's refusal of a setting
      problems.append(f'{name}: {e}')
      continue
    if not trained_space(c, model):
      problems.append(f'{name} has no knob a tune can search (no traced hyperparameter, '
                      'and an optimizer of its own): sweep its settings with vaecf-sweep')
  if problems:
    raise ConfigError('cannot tune as asked:\n  ' + '\n  '.join(problems))


def _run(config, workdir: Path, state: dict, split, model_names, budget, records,
         stop_after_rounds, models_per_pass, rule) -> dict:
  path = workdir / tune_records.STATE
  select = config.eval.select
  metric = checkpoints.best_key(select)
  state['select'] = select
  state.update(dataset=config.data.name, budget=budget, signature=split_signature(split),
               n_val_users=int(split.heldout('val')[1].getnnz(axis=1).astype(bool).sum()))
  new_rounds = {'n': 0}

  class Stop(Exception):
    pass

  for name in model_names:
    entry = state['models'].setdefault(name, {'rounds': []})
    if 'test' in entry:
      if not _budget_cut(entry) or budget <= entry['budget']:
        continue  # converged, or no more points to give it
      # Its search ended on the budget: a larger one goes on from the recorded rounds. The
      # earlier choice and its test stay on record, since test users were scored for it.
      log.info('%s: its tune stopped at a budget of %d points; going on to %d', name,
               entry['budget'], budget)
      entry.setdefault('earlier', []).append(
          {k: entry.pop(k) for k in ('budget', 'chosen', 'test', metric) if k in entry})
    entry['budget'] = budget  # models of one folder may be tuned by calls with other budgets
    entry['config'] = records[name]
    t0 = time.perf_counter() - entry.get('seconds', 0.0)

    def on_round(rounds, entry=entry, t0=t0):
      entry['rounds'] = rounds
      entry['seconds'] = time.perf_counter() - t0
      atomic_write(path, json.dumps(state, indent=2, default=float))
      new_rounds['n'] += 1
      if stop_after_rounds is not None and new_rounds['n'] >= stop_after_rounds:
        raise Stop

    try:
      if name in baselines.NAMES:
        best, rounds, final = tune_baseline(name, workdir, split, budget, entry['rounds'],
                                            on_round, config.eval)
      else:
        best, rounds, final = tune_trained(config, name, workdir, split, budget,
                                           entry['rounds'], on_round, models_per_pass, rule)
    except Stop:
      return state
    entry.update(rounds=rounds, chosen=best, **final,
                 points=sum(len(r['points']) for r in rounds),
                 seconds=time.perf_counter() - t0)
    entry[metric] = max(s for r in rounds for s in r['scores']) if rounds else None
    atomic_write(path, json.dumps(state, indent=2, default=float))
    log.info('%s: chose %s (val %s %s), test %s %.4f', name, best, select, entry[metric],
             select, final['test'][select])
  atomic_write(workdir / 'tune.md', markdown(state) + '\n')
  return state


def _budget_cut(entry: dict) -> bool:
  """Whether a finished search ended on its budget (it had proposals left) rather than by
  converging. Records older than 'converged' tell by their count: a search that spent its
  whole budget is taken as cut."""
  if 'converged' in entry:
    return not entry['converged']
  return entry.get('points', 0) >= entry.get('budget', math.inf)


def markdown(state: dict) -> str:
  select = checkpoints.recorded_select(state)
  metric = checkpoints.best_key(select)
  shown = [m for m in ('recall@20', 'recall@50', 'ndcg@100', select)
           if all(m in e['test'] for e in state['models'].values() if 'test' in e)]
  shown = list(dict.fromkeys(shown))
  lines = [f'{state["dataset"]}: every model tuned on validation users '
           f'({select}), test scored once with the chosen point.', '',
           f'| model | chosen | points | val {select} | ' +
           ' | '.join(f'test {m}' for m in shown) + ' | wall |',
           '|---|---|---|---|' + '---|' * len(shown) + '---|']
  for name, e in state['models'].items():
    if 'test' not in e:
      continue
    t = e['test']
    chosen = ', '.join(f'{k} {v:g}' for k, v in e['chosen'].items()) or '-'
    if 'best_epoch' in e:
      chosen += f', epoch {e["best_epoch"]}'
    val = f'{e[metric]:.4f}' if e.get(metric) is not None else '-'
    cells = ' | '.join(f'{t[m]:.4f}' + (f' ± {t[m + "_se"]:.4f}' if m + '_se' in t else '')
                       for m in shown)
    lines.append(f'| {name} | {chosen} | {e["points"]} | {val} | {cells} | '
                 f'{console.fmt_time(e["seconds"])} |')
  return '\n'.join(lines)


def plot(state: dict, workdir: Path) -> list[Path]:
  """The validation score (eval.select) over each knob of each model (every point tried)."""
  try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
  except ImportError:
    log.warning('matplotlib is not installed: no tune plots (pip install matplotlib)')
    return []
  written = []
  for name, e in state['models'].items():
    pts = [(p, s) for r in e.get('rounds', []) for p, s in zip(r['points'], r['scores'])]
    if not pts:
      continue
    knobs = list(pts[0][0])
    fig, axes = plt.subplots(1, len(knobs), figsize=(4 * len(knobs), 3.2), squeeze=False)
    for ax, k in zip(axes[0], knobs):
      ax.scatter([p[k] for p, _ in pts], [s for _, s in pts], s=14)
      if all(p[k] > 0 for p, _ in pts) and max(p[k] for p, _ in pts) > 5 * min(
          p[k] for p, _ in pts):
        ax.set_xscale('log')
      if 'chosen' in e:
        ax.axvline(e['chosen'][k], color='C3', lw=0.8)
      ax.set_xlabel(k)
      ax.set_ylabel(f'val {checkpoints.recorded_select(state)}')
    fig.suptitle(f'{name} on {state["dataset"]}', fontsize=10)
    fig.tight_layout()
    out = workdir / f'tune_{name}.png'
    fig.savefig(out, dpi=110)
    plt.close(fig)
    written.append(out)
  return written


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  console.setup()
  flags_ = flags.FLAGS
  state = run(flags_.config, flags_.workdir, flags_.models, flags_.budget,
              models_per_pass=sweep.resolve_models_per_pass(flags_.models_per_pass),
              rule=halving.from_flags(flags_.halving_eta, flags_.halving_min_epochs))
  print(markdown(state))
  for p in plot(state, Path(flags_.workdir)):
    print(p)


def cli():
  """Console script entry point (vaecf-tune); the flags exist only when the command runs."""
  flags.DEFINE_string('workdir', None, 'Directory of the tune (resumed when it exists).')
  flags.DEFINE_list('models', ['multvae', 'multdae', 'ease', 'wmf', 'slim', 'cdae',
                               'popularity'], 'Models to tune, in order.')
  flags.DEFINE_integer('budget', 16, 'Most points tried per model.')
  flags.DEFINE_integer('models_per_pass', None, 'Models of a round vmapped together (0: all; '
                       'unset: 1, a loop over them, on a CPU, where it is fastest, and all '
                       'on an accelerator).')
  flags.DEFINE_integer('halving_eta', 0, 'Successive halving of a trained round\'s points '
                       '(docs/tuning.md): at epochs r, r*eta, ... a point out of the top '
                       '1/eta that cannot catch the best stops. 0: off.')
  flags.DEFINE_integer('halving_min_epochs', halving.DEFAULT_MIN_EPOCHS,
                       'The first rung r of --halving_eta.')
  config_flags.DEFINE_config_file('config', None, 'A config file from configs/.',
                                  lock_config=True)
  flags.mark_flags_as_required(['config', 'workdir'])
  console.cli(main, __name__)


if __name__ == '__main__':
  cli()
