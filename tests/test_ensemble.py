"""vaecf.tools.ensemble: the weight grid, per-user standardising, and an ensemble of tuned
models whose corners are the members alone."""
import json
import math

import numpy as np
import pytest

from vaecf.tools import ensemble, tune
from test_sweep import embedded_split, small_config  # noqa: F401  (the fixture)


def test_the_weight_grid_is_the_simplex_in_steps_with_the_corners_first():
  g = ensemble.weight_grid(3, 4)
  assert g.shape == (math.comb(4 + 2, 2), 3)
  np.testing.assert_allclose(g.sum(axis=1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(g[:3], np.eye(3))
  assert len({tuple(r) for r in g}) == len(g) and (g >= 0).all()
  assert set(np.round(g.ravel() * 4, 5)) == {0, 1, 2, 3, 4}
  with pytest.raises(ValueError, match='one member'):
    ensemble.weight_grid(0, 4)


def test_standardise_matches_numpy_and_leaves_a_constant_row_at_zero():
  rng = np.random.default_rng(0)
  s = rng.normal(3.0, 5.0, (4, 7)).astype(np.float32)
  s[2] = 1.5
  s64 = s.astype(np.float64)
  want = (s64 - s64.mean(1, keepdims=True)) / np.maximum(s64.std(1, keepdims=True), 1e-300)
  np.testing.assert_allclose(np.asarray(ensemble.standardise(s)), want, rtol=1e-5,
                             atol=1e-6)
  assert not np.asarray(ensemble.standardise(s))[2].any()


@pytest.fixture(scope='module')
def tuned(tmp_path_factory, embedded_split):
  tmp = tmp_path_factory.mktemp('tune')
  c = small_config(tmp)
  c.train.epochs = 1
  tune.run(c, tmp / 'tune', ['ease', 'popularity', 'multvae'], budget=2, split=embedded_split)
  return c, tmp / 'tune'


def test_each_corner_is_its_member_alone_and_the_mix_is_chosen_on_validation(
    tuned, embedded_split):
  c, wd = tuned
  state = json.loads((wd / 'tune.json').read_text())
  out = ensemble.run(c, wd, ['ease', 'popularity', 'multvae'], steps=4, split=embedded_split)
  for k, m in enumerate(out['members']):
    assert out['grid'][k]['weights'] == [float(j == k) for j in range(3)]
    # Standardising keeps each user's ranking: the corner scores as the member did alone
    # in the tune (popularity has no points, so no validation score there).
    if m != 'popularity':
      assert out['members_alone'][m]['val_ndcg@100'] == pytest.approx(
          state['models'][m]['val_ndcg@100'], abs=1e-5)
  assert out['val_ndcg@100'] == max(g['val_ndcg@100'] for g in out['grid'])
  assert sum(out['weights'].values()) == pytest.approx(1.0)
  assert (wd / 'ensemble_ease+popularity+multvae_steps4.json').exists()
  # With only the corners to choose from, the ensemble is the best member on validation,
  # and its test score is that member's own from the tune.
  corners = ensemble.run(c, wd, ['ease', 'popularity'], steps=1, split=embedded_split)
  winner = max(corners['members_alone'],
               key=lambda m: corners['members_alone'][m]['val_ndcg@100'])
  assert corners['weights'][winner] == 1.0
  assert corners['test'] == pytest.approx(state['models'][winner]['test'], abs=1e-5)
  assert corners['test_ndcg@100_minus_member'][winner] == pytest.approx(
      {'mean': 0.0, 'se': 0.0}, abs=1e-6)
  loser = next(m for m in corners['members'] if m != winner)
  gap = corners['test']['ndcg@100'] - state['models'][loser]['test']['ndcg@100']
  assert corners['test_ndcg@100_minus_member'][loser]['mean'] == pytest.approx(gap, abs=1e-5)
  # The same members on another grid write a file of their own: steps=4's is kept.
  ensemble.run(c, wd, ['ease', 'popularity', 'multvae'], steps=1, split=embedded_split)
  kept = json.loads((wd / 'ensemble_ease+popularity+multvae_steps4.json').read_text())
  assert kept['steps'] == 4 and kept['weights'] == out['weights']
  assert (wd / 'ensemble_ease+popularity+multvae_steps1.json').exists()


def test_members_that_were_not_tuned_are_refused_by_name(tuned, embedded_split):
  c, wd = tuned
  with pytest.raises(ValueError, match="no finished tune of 'slim'"):
    ensemble.run(c, wd, ['ease', 'slim'], split=embedded_split)
  with pytest.raises(ValueError, match='two or more distinct'):
    ensemble.run(c, wd, ['ease', 'ease'], split=embedded_split)


def test_tune_and_ensemble_choose_by_eval_select(tmp_path, embedded_split):
  """With eval.select=recall@50 a tune's points, its choice and an ensemble's weights are
  those with the best validation Recall@50; a folder tuned by one metric refuses another."""
  from vaecf import baselines, evaluate
  from vaecf.config import ConfigError
  c = small_config(tmp_path)
  c.eval.select = 'recall@50'
  state = tune.run(c, tmp_path / 'tune', ['ease', 'popularity'], budget=3, split=embedded_split)
  assert state['select'] == 'recall@50'
  entry = state['models']['ease']
  points = [(p, s) for r in entry['rounds'] for p, s in zip(r['points'], r['scores'])]
  assert len(points) == 3
  val = embedded_split.heldout('val')
  for p, s in points:  # each score is that point's validation Recall@50, independently
    fitted = baselines.fit('ease', embedded_split.train, p, validation=val)
    assert s == pytest.approx(evaluate.evaluate(fitted.score_fn, *val).mean('recall@50'),
                              abs=1e-6)
  assert entry['chosen'] == max(points, key=lambda ps: ps[1])[0]
  assert entry['val_recall@50'] == max(s for _, s in points)
  out = ensemble.run(c, tmp_path / 'tune', ['ease', 'popularity'], steps=4,
                     split=embedded_split)
  assert out['select'] == 'recall@50'
  assert out['val_recall@50'] == max(g['val_recall@50'] for g in out['grid'])
  other = small_config(tmp_path)  # eval.select at its default, ndcg@100
  with pytest.raises(ConfigError, match='recall@50'):
    tune.run(other, tmp_path / 'tune', ['ease'], budget=4, split=embedded_split)
  with pytest.raises(ConfigError, match='recall@50'):
    ensemble.run(other, tmp_path / 'tune', ['ease', 'popularity'], split=embedded_split)
