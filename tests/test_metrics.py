"""Every metric of the evaluator's registry against a plain NumPy reference and by hand."""
from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.sparse as sp

from vaecf import distributed
from vaecf.evaluate import (DEFAULT_METRICS, KINDS, EvalResult, evaluate, evaluate_models,
                            parse_metrics)

# Ks below and above most users' target counts, above some users' candidate counts (120)
# and above the number of items (200 > 150); names and (kind, K) pairs mixed.
METRICS = ('recall@5', 'recall@200', 'ndcg@20', 'ndcg@200', ('mrr', 1), 'mrr@20', 'mrr@200',
           'hit@1', ('hit', 5), 'hit@200', 'precision@1', 'precision@5', 'precision@120',
           'precision@200', 'map@1', 'map@5', ('map', 20), 'map@200', 'coverage@1',
           'coverage@5', ('coverage', 20), 'coverage@120', 'coverage@200')
NAMES = tuple(m if isinstance(m, str) else f'{m[0]}@{m[1]}' for m in METRICS)
CATALOGUE = tuple(n for n in NAMES if n.startswith('coverage'))
PER_USER = tuple(n for n in NAMES if n not in CATALOGUE)


# ----------------------------------------------------------------------------------------
# Reference: one user at a time, straight from the definitions.
# ----------------------------------------------------------------------------------------

def reference(scores_UxI, fold: sp.csr_matrix, tgt: sp.csr_matrix, names):
  """(rows with targets, {name: per-user values}, {name: catalogue value})."""
  n_users, n_items = fold.shape
  rows = []
  per_user = {n: [] for n in names if not n.startswith('coverage')}
  covered = {n: set() for n in names if n.startswith('coverage')}
  for u in range(n_users):
    targets = set(tgt[u].indices.tolist())
    if not targets:
      continue
    rows.append(u)
    candidates = np.setdiff1d(np.arange(n_items), fold[u].indices)
    ranked = candidates[np.argsort(-scores_UxI[u, candidates].astype(np.float64))]
    for name in names:
      kind, k = name.split('@')
      k = int(k)
      top = ranked[:k]
      rel = [1.0 if i in targets else 0.0 for i in top]
      if kind == 'coverage':
        covered[name].update(top.tolist())
        continue
      if kind == 'recall':
        value = sum(rel) / min(k, len(targets))
      elif kind == 'ndcg':
        dcg = sum(r / np.log2(i + 2) for i, r in enumerate(rel))
        idcg = sum(1 / np.log2(i + 2) for i in range(min(k, len(targets))))
        value = dcg / idcg
      elif kind == 'mrr':
        value = next((1.0 / (i + 1) for i, r in enumerate(rel) if r), 0.0)
      elif kind == 'hit':
        value = 1.0 if any(rel) else 0.0
      elif kind == 'precision':
        value = sum(rel) / min(k, n_items)
      elif kind == 'map':
        value = sum(rel[i] * sum(rel[:i + 1]) / (i + 1) for i in range(len(rel)))
        value /= min(k, len(targets))
      else:
        raise AssertionError(kind)
      per_user[name].append(value)
  return (np.array(rows), {n: np.array(v) for n, v in per_user.items()},
          {n: len(s) / n_items for n, s in covered.items()})


def _random_data(seed, n_users=100, n_items=150, n_models=None):
  """Fold-in and disjoint targets (none, 1-3, some, many), and tie-free scores that rank
  targets higher by a random margin per user; each fold-in holds its user's tag item."""
  rng = np.random.default_rng(seed)
  fold = np.zeros((n_users, n_items), np.float32)
  tgt = np.zeros((n_users, n_items), np.float32)
  for u in range(n_users):
    others = rng.permutation(np.delete(np.arange(n_items), u))
    n_fold = int(rng.integers(0, 40))
    n_tgt = [0, 1, 2, 3, int(rng.integers(4, 30)), int(rng.integers(60, 100))][u % 6]
    fold[u, u] = 1
    fold[u, others[:n_fold]] = 1
    tgt[u, others[n_fold:n_fold + n_tgt]] = 1
  lead = () if n_models is None else (n_models,)
  noise = rng.normal(size=lead + (n_users, n_items))
  signal = rng.uniform(0, 3, size=lead + (n_users, 1)) * tgt
  scores = np.argsort(np.argsort(noise + signal, axis=-1), axis=-1).astype(np.float32)
  return sp.csr_matrix(fold), sp.csr_matrix(tgt), scores


def score_fn_of(scores, fold: sp.csr_matrix):
  """score_fn for precomputed [U, I] (or [M, U, I]) scores: a row is found by its fold-in."""
  user_of = {tuple(fold[u].indices.tolist()): u for u in range(fold.shape[0])}

  def score_fn(batch):
    out = np.zeros(scores.shape[:-2] + batch.shape, np.float32)
    for r in range(batch.shape[0]):
      u = user_of.get(tuple(batch[r].indices.tolist()))
      if u is not None:  # else a padding row
        out[..., r, :] = scores[..., u, :]
    return out
  return score_fn


def _assert_matches(result, rows, per_user, catalogue):
  np.testing.assert_array_equal(result.rows, rows)
  assert tuple(result.per_user) == PER_USER and tuple(result.catalogue) == CATALOGUE
  for name, want in per_user.items():
    got = result.per_user[name]
    assert got.shape == want.shape, name
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)
  for name, want in catalogue.items():
    assert result.catalogue[name] == pytest.approx(want, abs=1e-12), name


# ----------------------------------------------------------------------------------------
# Random data against the reference.
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def data():
  fold, tgt, scores = _random_data(0)
  return fold, tgt, scores, reference(scores, fold, tgt, NAMES)


def test_data_covers_edge_cases(data):
  fold, tgt, _, (rows, per_user, catalogue) = data
  n_tgt, n_fold = np.diff(tgt.indptr), np.diff(fold.indptr)
  assert (n_tgt == 0).any() and ((n_tgt > 0) & (n_tgt < 5)).any() and (n_tgt > 20).any()
  assert (fold.shape[1] - n_fold < 120).any()  # top-120 reaches past some users' candidates
  assert fold.multiply(tgt).nnz == 0
  for name, v in per_user.items():  # no metric is constant over users (but K >= all items)
    assert v.min() < v.max() or name in ('recall@200', 'hit@200'), name
  assert 0 < catalogue['coverage@1'] < catalogue['coverage@5'] < 1
  # The first batch of 7 users covers less than all users together.
  first = reference(fold=fold[:rows[6] + 1], tgt=tgt[:rows[6] + 1], scores_UxI=data[2],
                    names=['coverage@1', 'coverage@5'])[2]
  assert first['coverage@1'] < catalogue['coverage@1']
  assert first['coverage@5'] < catalogue['coverage@5']


@pytest.mark.parametrize('batch_size', [7, 32, 1000])
def test_evaluate_matches_reference(data, batch_size):
  fold, tgt, scores, ref = data
  result = evaluate(score_fn_of(scores, fold), fold, tgt, metrics=METRICS,
                    batch_size=batch_size)
  _assert_matches(result, *ref)


def test_summary_order_and_fields(data):
  fold, tgt, scores, (_, per_user, catalogue) = data
  result = evaluate(score_fn_of(scores, fold), fold, tgt, metrics=METRICS, batch_size=32)
  summary = result.summary()
  want_keys = []
  for name in NAMES:
    want_keys += [name] if name in CATALOGUE else [name, name + '_se']
  assert list(summary) == want_keys  # the order asked; coverage has no standard error
  for name, v in per_user.items():
    assert summary[name] == pytest.approx(v.mean(), abs=1e-6)
    assert result.mean(name) == pytest.approx(v.mean(), abs=1e-6)
    assert summary[name + '_se'] == pytest.approx(v.std() / np.sqrt(len(v)), abs=1e-6)
  for name, v in catalogue.items():
    assert summary[name] == result.mean(name) == pytest.approx(v, abs=1e-12)
    with pytest.raises(ValueError, match='catalogue'):
      result.stderr(name)


def test_evaluate_models_equals_evaluate_of_each_model():
  n_models = 3
  fold, tgt, scores_M = _random_data(1, n_users=60, n_models=n_models)
  results = evaluate_models(score_fn_of(scores_M, fold), fold, tgt, n_models,
                            metrics=METRICS, batch_size=9)
  assert len(results) == n_models
  for m, got in enumerate(results):
    alone = evaluate(score_fn_of(scores_M[m], fold), fold, tgt, metrics=METRICS, batch_size=9)
    np.testing.assert_array_equal(got.rows, alone.rows)
    assert got.catalogue == alone.catalogue
    assert list(got.summary()) == list(alone.summary())
    for name in PER_USER:
      np.testing.assert_allclose(got.per_user[name], alone.per_user[name], rtol=0, atol=1e-6,
                                 err_msg=name)
    _assert_matches(got, *reference(scores_M[m], fold, tgt, NAMES))
  # The models differ, so a mixed-up model axis would show.
  assert results[0].catalogue != results[1].catalogue or not np.array_equal(
      results[0].per_user['map@20'], results[1].per_user['map@20'])


def test_scores_sharded_over_devices():
  """A global score array split over the (fake) devices gives the host scores' values."""
  fold, tgt, scores_M = _random_data(2, n_users=50, n_models=2)
  mesh = distributed.make_mesh()
  if mesh.devices.size < 2:
    pytest.skip('needs several devices')
  batch = 2 * mesh.devices.size
  spec = jax.sharding.NamedSharding(mesh, jax.P(None, distributed.AXIS))
  host_fn = score_fn_of(scores_M, fold)
  results = evaluate_models(lambda b: jax.device_put(host_fn(b), spec), fold, tgt, 2,
                            metrics=METRICS, batch_size=batch)
  for m, got in enumerate(results):
    _assert_matches(got, *reference(scores_M[m], fold, tgt, NAMES))
  single_spec = jax.sharding.NamedSharding(mesh, jax.P(distributed.AXIS))
  one = evaluate(lambda b: jax.device_put(host_fn(b)[0], single_spec), fold, tgt,
                 metrics=METRICS, batch_size=batch)
  _assert_matches(one, *reference(scores_M[0], fold, tgt, NAMES))


# ----------------------------------------------------------------------------------------
# By hand: 5 items.
#   user 0: fold-in {4},    targets {0, 2}: ranking 0 1 2 3 = [t x t x]
#   user 1: fold-in {3, 4}, targets {2}:    ranking 0 1 2   = [x x t]
#   user 2: fold-in {1},    no targets (left out, though it would rank item 4 first)
# ----------------------------------------------------------------------------------------

def _tiny():
  fold = sp.csr_matrix(np.array([[0, 0, 0, 0, 1], [0, 0, 0, 1, 1], [0, 1, 0, 0, 0]],
                                np.float32))
  tgt = sp.csr_matrix(np.array([[1, 0, 1, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]],
                               np.float32))
  scores = np.array([[5, 4, 3, 2, 9], [5, 4, 3, 9, 8], [1, 2, 3, 4, 9]], np.float32)
  return fold, tgt, scores


NDCG3_USER0 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
TINY = {  # name: (user 0, user 1), or the catalogue value
    'recall@2': (1 / 2, 0), 'recall@3': (1, 1), 'recall@10': (1, 1),
    'ndcg@3': (NDCG3_USER0, 1 / np.log2(4)), 'ndcg@1': (1, 0),
    'mrr@3': (1, 1 / 3), 'mrr@2': (1, 0), 'mrr@10': (1, 1 / 3),
    'hit@1': (1, 0), 'hit@2': (1, 0), 'hit@3': (1, 1),
    'precision@1': (1, 0), 'precision@3': (2 / 3, 1 / 3),
    'precision@10': (2 / 5, 1 / 5),  # K clamped to the 5 items
    'map@2': (1 / 2, 0), 'map@3': ((1 + 2 / 3) / 2, 1 / 3), 'map@10': ((1 + 2 / 3) / 2, 1 / 3),
    'coverage@1': 1 / 5,  # item 0 only
    'coverage@3': 3 / 5,  # items 0, 1, 2
    'coverage@10': 4 / 5,  # item 4 is fold-in for both users, so no one's recommendation
}


@pytest.mark.parametrize('name', list(TINY))
def test_hand_computed(name):
  fold, tgt, scores = _tiny()
  result = evaluate(score_fn_of(scores, fold), fold, tgt, metrics=[name], batch_size=1)
  np.testing.assert_array_equal(result.rows, [0, 1])
  if name.startswith('coverage'):
    assert result.per_user == {}
    assert result.catalogue[name] == pytest.approx(TINY[name], abs=1e-12)
    assert result.summary() == {name: pytest.approx(TINY[name], abs=1e-12)}
  else:
    assert result.catalogue == {}
    np.testing.assert_allclose(result.per_user[name], TINY[name], rtol=0, atol=1e-6)
    assert result.mean(name) == pytest.approx(np.mean(TINY[name]), abs=1e-6)


def test_hand_computed_all_at_once():
  """All of them in one pass (one top-k for the largest K) give the same values."""
  fold, tgt, scores = _tiny()
  result = evaluate(score_fn_of(scores, fold), fold, tgt, metrics=list(TINY), batch_size=2)
  for name, want in TINY.items():
    got = result.catalogue[name] if name.startswith('coverage') else result.per_user[name]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------------------
# The result type and the names.
# ----------------------------------------------------------------------------------------

def test_eval_result_without_catalogue():
  r = EvalResult({'ndcg@100': np.array([0.5, 1.0])}, np.array([3, 7]))
  assert r.catalogue == {} and r.n_users == 2
  assert r.summary() == {'ndcg@100': 0.75, 'ndcg@100_se': pytest.approx(0.25 / np.sqrt(2))}
  r = EvalResult(per_user={'hit@5': np.array([1.0, 0.0])}, rows=np.array([0, 1]),
                 catalogue={'coverage@5': 0.25})
  assert r.summary() == {'hit@5': 0.5, 'hit@5_se': pytest.approx(0.5 / np.sqrt(2)),
                         'coverage@5': 0.25}
  assert r.mean('coverage@5') == 0.25


def test_no_user_has_targets():
  fold, _, scores = _tiny()
  empty = sp.csr_matrix(fold.shape, dtype=np.float32)
  result = evaluate(score_fn_of(scores, fold), fold, empty, metrics=['map@3', 'coverage@3'])
  assert result.n_users == 0 and len(result.per_user['map@3']) == 0
  assert result.catalogue == {'coverage@3': 0.0}


def test_parse_metrics():
  assert set(KINDS) == {'recall', 'ndcg', 'mrr', 'hit', 'precision', 'map', 'coverage'}
  assert parse_metrics([f'{k}@7' for k in KINDS]) == tuple((k, 7) for k in KINDS)
  assert parse_metrics(['map@10', ('coverage', 3)]) == (('map', 10), ('coverage', 3))
  assert parse_metrics(DEFAULT_METRICS) == (('recall', 20), ('recall', 50), ('ndcg', 100))
  for bad, match in [(['auc@10'], 'unknown metric'), ([('auc', 10)], 'unknown metric'),
                     (['map'], 'integer K'), (['map@0'], 'integer K'),
                     (['hit@x'], 'integer K'), (['hit@-1'], 'integer K'),
                     ([('hit', 0)], 'integer >= 1'), ([('hit', 2.5)], 'integer >= 1'),
                     ([('hit', '5')], 'integer >= 1'), ([('hit', 5, 6)], 'pair'),
                     (['mrr@5', ('mrr', 5)], 'mrr@5 is named twice'),
                     ([], 'no metric')]:
    with pytest.raises(ValueError, match=match):
      parse_metrics(bad)
  with pytest.raises(ValueError, match='unknown metric'):
    evaluate(lambda b: np.zeros(b.shape, np.float32), *_tiny()[:2], metrics=['auc@5'])
