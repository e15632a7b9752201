"""Ensembles of tuned models: a weighted sum of each member's per-user standardised scores,
the weights chosen on validation users, the test users scored once.

  vaecf-ensemble --config=configs/multvae.py:ml-1m --config.data.path=PATH/ml-1m \
      --tune=DIR --members=ease,multdae [--steps=10]

DIR is a finished vaecf-tune (same config and data): each member is the point it
chose, a saved baseline or a trained model at its best validation epoch. Scores are put
on one scale per user (mean 0, standard deviation 1 over the items: members' raw scales
differ by orders of magnitude), then mixed with weights on the simplex in steps of
1/steps. Every weight vector of the grid is scored in one pass over the validation users
(the evaluator's model axis). A corner of the grid is one member alone, and per-user
standardising keeps each user's ranking, so the grid holds each member's own score and
the chosen mix is never below the best member on validation.
Writes DIR/ensemble_<members>_steps<steps>.json (grids of other steps do not overwrite it),
with the test gain over each member paired user by user.
"""
from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from vaecf.tools import tune, tune_records
from vaecf import checkpoints, console, evaluate
from vaecf.common import atomic_write
from vaecf.config import ConfigError, validate
from vaecf.workdir import WorkdirError
from vaecf.data import load_split

log = logging.getLogger(__name__)
# Scored besides eval.metrics: the paper's three, which the summary and the docs show.
DEFAULT_SHOWN = ('recall@20', 'recall@50', 'ndcg@100')


def weight_grid(n_members: int, steps: int) -> np.ndarray:
  """[W, n_members]: every vector of multiples of 1/steps that sums to 1, corners first."""
  if n_members < 1 or steps < 1:
    raise ValueError(f'need at least one member and one step, got {n_members}, {steps}')
  rows = [np.eye(n_members)[k] * steps for k in range(n_members)]
  rows += [np.array(c) for c in itertools.product(range(steps + 1), repeat=n_members)
           if sum(c) == steps and max(c) < steps]
  return np.stack(rows).astype(np.float32) / steps


def standardise(scores_BxI):
  """Each row to mean 0 and standard deviation 1 (a constant row to 0)."""
  s = jnp.asarray(scores_BxI, jnp.float32)
  centred = s - s.mean(axis=-1, keepdims=True)
  sd = jnp.sqrt(jnp.mean(centred * centred, axis=-1, keepdims=True))
  # A constant row's mean is rounded, leaving a spread of rounding error, not a ranking.
  flat = sd <= 1e-6 * jnp.max(jnp.abs(s), axis=-1, keepdims=True)
  return jnp.where(flat, 0.0, centred / jnp.where(flat, 1.0, sd))


def mixed_score_fn(score_fns, weights_WxK):
  """csr -> [W, B, I]: for each weight vector, the weighted sum of standardised scores."""
  w = jnp.asarray(weights_WxK, jnp.float32)

  def score_fn(x):
    z = jnp.stack([standardise(f(x)) for f in score_fns])  # [K, B, I]
    return jnp.einsum('wk,kbi->wbi', w, z)
  return score_fn


def run(config, tune_dir: str | Path, members: list[str], steps: int = 10, *,
        split=None, batch_size: int = 500, trust_code: bool = False) -> dict:
  """Chooses the weights on validation, scores test once; returns what it writes.

  Everything it can check without data is checked first: the members (two or more,
  each a finished tune of the folder), the grid's steps, the selection metric. The tune's
  folder is locked while it runs, so no tune rewrites it meanwhile; a round naming a model
  module is opened only with `trust_code` (or when this config names that module).
  """
  validate(config)
  problems = []
  if len(set(members)) != len(members) or len(members) < 2:
    problems.append(f'--members={",".join(members)}: an ensemble needs two or more '
                    'distinct members')
  if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
    problems.append(f'--steps={steps!r}: an integer >= 1 (weights are multiples of 1/steps)')
  if problems:
    raise ConfigError('cannot build the ensemble as asked:\n  ' + '\n  '.join(problems))
  tune_dir = Path(tune_dir)
  if not (tune_dir / tune_records.STATE).exists():
    raise WorkdirError(f'{tune_dir} holds no {tune_records.STATE}: --tune names the folder of '
                       'a finished vaecf-tune')
  state = tune_records.read_state(tune_dir)
  for m in members:
    tune.finished(state, m, tune_dir)
  tune_records.check_select(state, config.eval.select, tune_dir)
  if split is None:
    split, _ = load_split(config.data)
  tune_records.check(tune_dir, state, split, {})  # the tune's own data, or a refusal
  lock = tune_records.lock(tune_dir)
  try:
    return _run(config, tune_dir, tune_records.read_state(tune_dir), split, members, steps,
                batch_size, trust_code)
  finally:
    lock.close()


def _run(config, tune_dir: Path, state: dict, split, members, steps, batch_size,
         trust_code) -> dict:
  select = config.eval.select
  metrics = tuple(dict.fromkeys((*config.eval.metrics, *DEFAULT_SHOWN)))
  scorers = [tune.chosen_scorer(m, tune_dir, split, state, trust_code=trust_code,
                                asked=config.model.module) for m in members]
  fns = [f for f, _ in scorers]
  grid = weight_grid(len(members), steps)
  # The [W, B, I] block of mixed scores stays under about 256 MB.
  batch = max(1, min([batch_size, 2 ** 26 // (len(grid) * split.n_items)]
                     + [b for _, b in scorers]))
  t0 = time.perf_counter()
  val = evaluate.evaluate_models(mixed_score_fn(fns, grid), *split.heldout('val'),
                                 len(grid), metrics=metrics, batch_size=batch)
  val_score = np.array([r.mean(select) for r in val])
  best = int(np.argmax(val_score))  # ties: the first, so a corner (one member) wins them
  chosen = grid[best]
  # The choice is made; the corners ride along on test only for paired differences.
  scored = np.concatenate([chosen[None], grid[:len(members)]])
  test, *alone = evaluate.evaluate_models(mixed_score_fn(fns, scored), *split.heldout('test'),
                                          len(scored), metrics=metrics, batch_size=batch)
  # Paired user by user on a per-user metric: the selected one, else (a catalogue metric
  # such as coverage has no per-user values) NDCG@100.
  per_user = select if select in test.per_user else 'ndcg@100'
  paired = {}
  for m, r in zip(members, alone):
    d = test.per_user[per_user] - r.per_user[per_user]
    paired[m] = {'mean': float(d.mean()), 'se': float(d.std() / np.sqrt(len(d)))}
  key = checkpoints.best_key(select)
  out = {'dataset': config.data.name, 'members': members, 'steps': steps, 'select': select,
         'weights': dict(zip(members, map(float, chosen))),
         key: float(val_score[best]),
         'grid': [{'weights': list(map(float, w)), key: float(v)}
                  for w, v in zip(grid, val_score)],
         'members_alone': {m: {key: float(val_score[k]),
                               'test': state['models'][m]['test']}
                           for k, m in enumerate(members)},
         'test': test.summary(), 'n_test_users': test.n_users, 'paired_metric': per_user,
         f'test_{per_user}_minus_member': paired, 'seconds': time.perf_counter() - t0}
  atomic_write(tune_dir / f'ensemble_{"+".join(members)}_steps{steps}.json',
               json.dumps(out, indent=2))
  return out


def _pm(t: dict, m: str) -> str:
  return f'{t[m]:.4f}' + (f' ± {t[m + "_se"]:.4f}' if m + '_se' in t else '')


def summary(out: dict) -> str:
  t, select = out['test'], checkpoints.recorded_select(out)
  paired_metric = out.get('paired_metric', checkpoints.DEFAULT_SELECT)
  weights = ', '.join(f'{m} {w:.2f}' for m, w in out['weights'].items())
  lines = [f'{out["dataset"]}: ensemble weights chosen on validation: {weights} '
           f'(val {select} {out[checkpoints.best_key(select)]:.4f})',
           f'  test ({out["n_test_users"]} users): ' +
           ', '.join(f'{m} {_pm(t, m)}' for m in t if not m.endswith('_se'))]
  for m, a in out['members_alone'].items():
    d = out[f'test_{paired_metric}_minus_member'][m]
    mt = a['test']
    lines.append(f'  {m} alone: val {select} {a[checkpoints.best_key(select)]:.4f}, '
                 f'test {paired_metric} '
                 f'{_pm(mt, paired_metric) if paired_metric in mt else "-"}; ensemble '
                 f'minus it, paired over test users: {d["mean"]:+.4f} ± {d["se"]:.4f}')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  console.setup()
  f = flags.FLAGS
  print(summary(run(f.config, f.tune, f.members, f.steps, trust_code=f.trust_code)))


def cli():
  """Console script entry point (vaecf-ensemble); the flags exist only when the command runs."""
  flags.DEFINE_string('tune', None, 'The workdir of a finished vaecf-tune.')
  flags.DEFINE_list('members', None, 'Tuned models to mix, e.g. ease,multdae.')
  flags.DEFINE_integer('steps', 10, 'Weights are multiples of 1/steps.')
  flags.DEFINE_bool('trust_code', False, 'Import the model modules that the tune\'s rounds '
                    'name in their config.json (runs their code); needed only for models '
                    'of your own that this command\'s config does not name.')
  config_flags.DEFINE_config_file('config', None, 'The config file the tune ran with.',
                                  lock_config=True)
  flags.mark_flags_as_required(['config', 'tune', 'members'])
  console.cli(main, __name__)


if __name__ == '__main__':
  cli()
