"""vaecf.tools.tune: grids that refine past their edges, and a killed tune that resumes to
the same choice."""
import json
import math

import pytest

from vaecf import checkpoints
from vaecf.tools import tune
from test_sweep import embedded_split, small_config  # noqa: F401  (the fixture)


def _objective(optimum):
  """A smooth peak in log10 of each knob: the validation score of a synthetic model."""
  def evaluate_round(points, done=()):
    return [{checkpoints.BEST_METRIC: -sum((math.log10(p[k]) - math.log10(v)) ** 2
                               for k, v in optimum.items())} for p in points]
  return evaluate_round


def test_the_search_extends_past_the_first_grid_to_an_optimum_outside_it():
  knobs = [tune.Knob('lam', (1.0, 3.0, 10.0), lo=1e-6, resolution=1.2),
           tune.Knob('alpha', (0.01, 0.1), lo=1e-6, resolution=1.2)]
  best, rounds = tune.search(knobs, _objective({'lam': 300.0, 'alpha': 2e-4}), budget=200,
                             base=tune.base_point(knobs))
  assert 300 / 1.2 <= best['lam'] <= 300 * 1.2 and 2e-4 / 1.2 <= best['alpha'] <= 2e-4 * 1.2
  tried = [p for r in rounds for p in r['points']]
  assert max(p['lam'] for p in tried) > 10.0 and min(p['alpha'] for p in tried) < 0.01
  assert len({json.dumps(p, sort_keys=True) for p in tried}) == len(tried)  # none twice


def test_a_hard_bound_is_an_answer_and_a_linear_knob_refines_to_its_resolution():
  knob = tune.Knob('dropout', (0.3, 0.5, 0.7), 'linear', 0.0, 0.9, 0.05)
  # Best at the bound 0.
  score = lambda pts, done: [{checkpoints.BEST_METRIC: -p['dropout']} for p in pts]
  best, rounds = tune.search([knob], score, budget=50, base=tune.base_point([knob]))
  assert best == {'dropout': 0.0}
  assert min(p['dropout'] for r in rounds for p in r['points']) == 0.0  # clipped, not below
  score = lambda pts, done: [{checkpoints.BEST_METRIC: -abs(p['dropout'] - 0.42)} for p in pts]
  best, _ = tune.search([knob], score, budget=50, base=tune.base_point([knob]))
  assert abs(best['dropout'] - 0.42) <= 0.05


def test_the_budget_bounds_the_points_tried():
  knobs = [tune.Knob('lam', (1.0, 3.0, 10.0), lo=1e-6, resolution=1.01)]
  _, rounds = tune.search(knobs, _objective({'lam': 1e4}), budget=7, base=tune.base_point(knobs))
  assert sum(len(r['points']) for r in rounds) == 7


def test_a_round_an_earlier_budget_cut_is_finished_without_evaluating_its_points_again():
  knobs = [tune.Knob('lam', (10.0, 100.0, 1000.0)), tune.Knob('alpha', (1e-4, 1e-3))]
  objective = _objective({'lam': 300.0, 'alpha': 2e-4})
  evaluated = []

  def counting(points, done):
    evaluated.extend(points)
    return objective(points)
  base = tune.base_point(knobs)
  _, cut = tune.search(knobs, counting, budget=2, base=base)
  assert [len(r['points']) for r in cut] == [2]  # the budget cut the first grid
  fresh = tune.search(knobs, objective, budget=9, base=base)
  evaluated.clear()
  grown = tune.search(knobs, counting, budget=9, base=base, rounds=cut)
  assert grown[0] == fresh[0]
  for key in ('points', 'scores'):
    assert [r[key] for r in grown[1]] == [r[key] for r in fresh[1]]
  assert not any(p in evaluated for p in cut[0]['points'])  # recorded points reused
  assert len(evaluated) == sum(len(r['points']) for r in fresh[1]) - 2
  assert not tune.converged(knobs, cut, base) and not tune.converged(knobs, grown[1], base)
  assert tune.converged(knobs, tune.search(knobs, objective, budget=200, base=base)[1], base)


@pytest.mark.slow
def test_a_killed_and_resumed_tune_ends_with_the_same_choice(tmp_path, embedded_split):
  c = small_config(tmp_path)
  c.train.epochs = 1
  names = ['ease', 'multvae']
  full = tune.run(c, tmp_path / 'full', names, budget=4, split=embedded_split)
  tune.run(c, tmp_path / 'killed', names, budget=4, split=embedded_split, stop_after_rounds=1)
  assert 'test' not in json.loads((tmp_path / 'killed' / 'tune.json').read_text())[
      'models']['ease']
  tune.run(c, tmp_path / 'killed', names, budget=4, split=embedded_split, stop_after_rounds=3)
  resumed = tune.run(c, tmp_path / 'killed', names, budget=4, split=embedded_split)
  for name in names:
    a, b = full['models'][name], resumed['models'][name]
    assert a['chosen'] == b['chosen'] and a['points'] == b['points'] <= 4
    flat = lambda e: [s for r in e['rounds'] for s in r['scores']]
    assert flat(a) == pytest.approx(flat(b))
    assert a['test'] == pytest.approx(b['test'])
  assert set(full['models']['multvae']['chosen']) == {'anneal_cap', 'dropout_rate',
                                                      'learning_rate'}
  table = (tmp_path / 'killed' / 'tune.md').read_text()
  assert '| ease | lam ' in table and '| multvae | anneal_cap ' in table


def test_a_larger_budget_goes_on_from_a_search_the_budget_cut(tmp_path, embedded_split):
  c = small_config(tmp_path)
  fresh = tune.run(c, tmp_path / 'fresh', ['ease'], budget=5, split=embedded_split)['models']
  cut = tune.run(c, tmp_path / 'grown', ['ease'], budget=3, split=embedded_split)['models']
  assert cut['ease']['points'] == 3 and tune._budget_cut(cut['ease'])
  first = {k: cut['ease'][k] for k in ('chosen', 'test')}
  grown = tune.run(c, tmp_path / 'grown', ['ease'], budget=5, split=embedded_split)['models']
  a, b = fresh['ease'], grown['ease']
  assert b['points'] == a['points'] == 5 and b['budget'] == 5
  assert a['chosen'] == b['chosen'] and a['test'] == pytest.approx(b['test'])
  assert [r['points'] for r in a['rounds']] == [r['points'] for r in b['rounds']]
  # The earlier choice's test was scored, so it stays on record.
  assert [{k: e[k] for k in ('budget', 'chosen', 'test')} for e in b['earlier']] == [
      {'budget': 3, **first}]
  # Converged, or given no more points: a rerun leaves the record as it is.
  again = tune.run(c, tmp_path / 'grown', ['ease'], budget=5, split=embedded_split)['models']
  assert again['ease'] == b
  done = tune.run(c, tmp_path / 'conv', ['ease'], budget=30, split=embedded_split)['models']
  assert done['ease']['points'] < 30 and not tune._budget_cut(done['ease'])  # converged
  more = tune.run(c, tmp_path / 'conv', ['ease'], budget=60, split=embedded_split)['models']
  assert more['ease'] == done['ease']


@pytest.mark.slow
def test_a_trained_round_grown_by_a_larger_budget_serves_each_of_its_points(tmp_path,
                                                                           embedded_split):
  from vaecf import evaluate
  c = small_config(tmp_path)
  c.train.epochs = 1
  tune.run(c, tmp_path, ['multvae'], budget=2, split=embedded_split)  # cuts the cap grid
  entry = tune.run(c, tmp_path, ['multvae'], budget=3, split=embedded_split)['models'][
      'multvae']
  first = entry['rounds'][0]
  assert len(first['points']) == 3 and len({d['workdir'] for d in first['details']}) == 2
  sweep_size = lambda d: sum(e['workdir'] == d['workdir'] for e in first['details'])
  assert [sweep_size(d) for d in first['details']] == [2, 2, 1]
  for point, detail in zip(first['points'], first['details']):  # each from its own sweep
    state = {**entry, 'chosen': point}
    score_fn, batch = tune.chosen_scorer('multvae', tmp_path, embedded_split,
                                         {'models': {'multvae': state}})
    val = evaluate.evaluate(score_fn, *embedded_split.heldout('val'), batch_size=batch)
    assert val.summary()['ndcg@100'] == pytest.approx(detail[checkpoints.BEST_METRIC], rel=1e-5)
  # A round's sweep opens without being told its size (its points are not in its config).
  import jax
  from vaecf import distributed, sweep
  from vaecf.workdir import load_config
  for detail in first['details']:
    assert not detail['workdir'].startswith('/')  # relative: a moved tune opens its own
    params = sweep.restore_best_params(tmp_path / detail['workdir'],
                                       load_config(tmp_path / detail['workdir']),
                                       embedded_split.n_items, distributed.make_mesh())
    assert jax.tree.leaves(params)[0].shape[0] == sweep_size(detail)


@pytest.mark.slow
def test_edlae_and_multdae_tune_from_the_multvae_config(tmp_path, embedded_split):
  # The documented calls: `--models=multdae` (its weight_decay is unset in this config)
  # and EDLAE, the baseline beside EASE; the test metrics are the chosen point's own.
  from vaecf import baselines, evaluate
  c = small_config(tmp_path)
  c.train.epochs = 1
  out = tune.run(c, tmp_path / 'tune', ['edlae', 'multdae'], budget=3,
                 split=embedded_split)['models']
  assert set(out['multdae']['chosen']) == {'dropout_rate', 'weight_decay', 'learning_rate'}
  chosen = out['edlae']['chosen']
  assert set(chosen) == {'lam', 'p'} and out['edlae']['points'] == 3
  fitted = baselines.fit('edlae', embedded_split.train, chosen)
  again = evaluate.evaluate(fitted.score_fn, *embedded_split.heldout('test'),
                            metrics=c.eval.metrics)
  assert out['edlae']['test'] == pytest.approx(again.summary())


def test_every_registered_model_has_a_space_to_search():
  # RaCT's only traced knob is its dropout (a probability, searched on its own line and
  # kept above 0); VASP's are its focal loss and KL weight; RecVAE's its gamma.
  from vaecf import models, presets
  want = {'ract': {'dropout_rate'}, 'vasp': {'focal_alpha', 'focal_gamma', 'kl_weight'},
          'recvae': {'gamma'}, 'hvamp': None}
  for name, knobs in want.items():
    c = presets.compose(name)
    space = tune.trained_space(c, models.build(c, 50))
    if knobs is not None:
      assert {k.name for k in space} == knobs, name
    for k in space:
      lo = k.lo if k.lo is not None else -math.inf
      assert all(lo <= v <= (k.hi if k.hi is not None else math.inf) for v in k.start), k
  dropout = {k.name: k for k in tune.trained_space(presets.compose('ract'), models.build(
      presets.compose('ract'), 50))}['dropout_rate']
  assert dropout.scale == 'linear' and dropout.lo > 0 and dropout.hi < 1
