"""Baselines against small independent NumPy references, and the persisted format."""
import numpy as np
import pytest
import scipy.sparse as sp

from vaecf import baselines, evaluate, sparse
from vaecf.baselines import cdae, ease, slim, wmf


def _clicks(n_users=40, n_items=15, density=0.3, seed=0):
  x = sp.random(n_users, n_items, density, format='csr', random_state=seed, dtype=np.float32)
  x.data[:] = 1.0
  return x


@pytest.mark.parametrize('form', ['auto', 'primal', 'dual'])
@pytest.mark.parametrize('n_users,n_items', [(40, 15), (12, 60)])
def test_ease_equals_a_direct_numpy_solve(form, n_users, n_items):
  x, lam = _clicks(n_users, n_items), 7.0
  d = x.toarray().astype(np.float64)
  p = np.linalg.inv(d.T @ d + lam * np.eye(d.shape[1]))
  expect = np.eye(d.shape[1]) - p / np.diag(p)[None, :]
  fitted = baselines.fit('ease', x, {'lam': lam, 'form': form})
  want_form = form if form != 'auto' else ('dual' if n_users < n_items else 'primal')
  assert fitted.info['form'] == want_form
  got = fitted.arrays['weights']
  assert np.all(np.diag(got) == 0)
  np.testing.assert_allclose(got, expect, atol=2e-5)
  np.testing.assert_allclose(np.asarray(fitted.score_fn(x[:5])), d[:5] @ expect, atol=1e-4)


def test_ease_primal_and_dual_give_the_same_metrics():
  x = _clicks(30, 80, density=0.15, seed=3)
  fold_in, targets = _clicks(25, 80, density=0.1, seed=4), _clicks(25, 80, density=0.05, seed=5)
  res = [evaluate.evaluate(baselines.fit('ease', x, {'lam': 2.0, 'form': f}).score_fn,
                           fold_in, targets).summary() for f in ('primal', 'dual')]
  for k in res[0]:
    assert abs(res[0][k] - res[1][k]) < 1e-6, (k, res)


def _np_user_solve(y, row, alpha, lam):
  """Hu et al.'s normal equations for one user, dense."""
  c = 1.0 + alpha * row
  p = (row > 0).astype(np.float64)
  a = y.T @ (c[:, None] * y) + lam * np.eye(y.shape[1])
  return np.linalg.solve(a, y.T @ (c * p))


def test_wmf_fold_in_equals_numpy_linalg():
  rng = np.random.default_rng(0)
  y = rng.normal(size=(15, 4)).astype(np.float32)
  x = _clicks(6, 15, seed=1)
  alpha, lam = 9.0, 0.5
  scores = np.asarray(wmf.make_score_fn({'item_factors': y}, {'alpha': alpha, 'lam': lam})(x))
  for u in range(6):
    expect = _np_user_solve(y.astype(np.float64), x[u].toarray()[0], alpha, lam) @ y.T
    np.testing.assert_allclose(scores[u], expect, rtol=1e-3, atol=1e-4)


def test_wmf_conjugate_gradient_reaches_the_exact_half_step():
  rng = np.random.default_rng(1)
  y = rng.normal(size=(15, 4)).astype(np.float32)
  x = _clicks(30, 15, seed=2)
  exact = np.asarray(wmf.half_step(x, y, 4.0, 1.0))
  by_cg = np.asarray(wmf.half_step(x, y, 4.0, 1.0, cg_steps=8))  # K = 4: exact in 4 steps
  np.testing.assert_allclose(by_cg, exact, rtol=1e-3, atol=1e-3)
  for u in (0, 7, 29):
    np.testing.assert_allclose(exact[u], _np_user_solve(y, x[u].toarray()[0], 4.0, 1.0),
                               rtol=1e-3, atol=1e-4)


def test_wmf_loss_matches_dense_formula_and_als_decreases_it():
  x, alpha, lam = _clicks(20, 12, seed=3), 4.0, 0.3
  rng = np.random.default_rng(2)
  u, y = rng.normal(size=(20, 3)), rng.normal(size=(12, 3))
  d = x.toarray()
  dense = np.sum((1 + alpha * d) * (d - u @ y.T) ** 2) + lam * (np.sum(u * u) + np.sum(y * y))
  assert wmf.loss(x, u, y, alpha, lam) == pytest.approx(dense, rel=1e-9)
  losses, y = [], y.astype(np.float32)
  for _ in range(4):
    u = wmf.half_step(x, y, alpha, lam)
    y = wmf.half_step(sp.csr_matrix(x.T), u, alpha, lam)
    losses.append(wmf.loss(x, u, y, alpha, lam))
  assert all(b <= a * (1 + 1e-5) for a, b in zip(losses, losses[1:]))


def _np_slim_coordinate_descent(g, l1, l2, sweeps=3000):
  """Reference: per-column projected coordinate descent on the SLIM objective."""
  n = g.shape[0]
  w = np.zeros((n, n))
  for j in range(n):
    for _ in range(sweeps):
      for k in range(n):
        if k == j:
          continue
        rest = g[k] @ w[:, j] - g[k, k] * w[k, j]
        w[k, j] = max(0.0, g[k, j] - rest - l1) / (g[k, k] + l2)
  return w


def test_slim_is_nonnegative_zero_diagonal_and_matches_coordinate_descent():
  x, l1, l2 = _clicks(50, 8, density=0.4, seed=4), 0.5, 2.0
  g = ease.gram(x).astype(np.float64)
  w, report = slim.solve(g, l1, l2, eps_abs=1e-7, eps_rel=1e-6, max_iters=5000)
  assert report['converged']
  assert np.all(w >= 0) and np.all(np.diag(w) == 0)
  ref = _np_slim_coordinate_descent(g, l1, l2, sweeps=300)
  np.testing.assert_allclose(w, ref, atol=2e-3)
  assert slim.objective(g, w, l1, l2) == pytest.approx(slim.objective(g, ref, l1, l2), rel=1e-5)
  # KKT of the objective: gradient zero on the support, >= 0 off it (off the diagonal).
  grad = g @ w - g + l2 * w + l1
  off = ~np.eye(8, dtype=bool)
  assert np.all(np.abs(grad[(w > 0) & off]) < 1e-2)
  assert np.all(grad[(w == 0) & off] > -1e-2)


def test_slim_fit_stores_sparse_weights_and_scores_x_w():
  x = _clicks(60, 10, density=0.4, seed=5)
  fitted = baselines.fit('slim', x, {'l1': 1.0, 'l2': 5.0})
  w = slim.weights(fitted.arrays).toarray()
  assert np.all(w >= 0) and np.all(np.diag(w) == 0) and fitted.info['converged']
  np.testing.assert_allclose(np.asarray(fitted.score_fn(x[:4])), x[:4].toarray() @ w, atol=1e-4)


def test_popularity_ranks_by_training_counts():
  x = _clicks(30, 9, seed=6)
  scores = np.asarray(baselines.fit('popularity', x, {}).score_fn(x[:3]))
  counts = np.asarray(x.sum(0)).ravel()
  np.testing.assert_array_equal(scores, np.tile(counts, (3, 1)))


def _np_cdae_logits(arrays, x_dense, v):
  h = 1 / (1 + np.exp(-(x_dense @ arrays['enc_w'] + arrays['enc_b'] + v)))
  return h @ arrays['dec_w'] + arrays['dec_b']


def test_cdae_forward_and_user_node_fold_in():
  import jax
  x = _clicks(12, 20, density=0.3, seed=7)
  params = cdae.init(jax.random.key(0), 20, 12, 5)
  arrays = {k: np.asarray(params[k]) for k in cdae.SHARED}
  batch = sparse.shard_rows(x)
  v = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
  got = np.asarray(cdae.logits(arrays, batch, batch.vals, v))
  np.testing.assert_allclose(got, _np_cdae_logits(arrays, x.toarray(), v), rtol=1e-4, atol=1e-5)
  # Fitting V_u lowers each user's own (noise-free) loss below the V_u = 0 start.
  hp = {**cdae.DEFAULTS, 'corruption': 0.0, 'fold_in_steps': 30}
  fitted_v = cdae.fit_user_nodes(arrays, batch, jax.random.key(1), hp)
  loss = lambda v: np.asarray(cdae.user_loss(arrays, v, batch, None, 0.0, hp['lam']))
  has_items = np.diff(x.indptr) > 0
  assert np.all(loss(fitted_v)[has_items] < loss(np.zeros_like(v))[has_items])


def test_cdae_trains_and_picks_its_epoch_and_user_node_on_validation():
  x = _clicks(80, 20, density=0.3, seed=8)
  val = (_clicks(10, 20, density=0.3, seed=9), _clicks(10, 20, density=0.2, seed=10))
  hp = {'hidden': 8, 'epochs': 4, 'eval_every': 2, 'batch_size': 32, 'fold_in_steps': 5}
  fitted = baselines.fit('cdae', x, hp, validation=val)
  assert fitted.hparams['epochs'] in (2, 4)
  assert fitted.hparams['user_node'] in ('fit', 'zero')
  assert set(fitted.info['val_ndcg@100_by_user_node']) == {'fit', 'zero'}
  assert [e for e, _, _ in fitted.info['val_curve']] == [2, 4]
  assert np.asarray(fitted.score_fn(val[0])).shape == (10, 20)


@pytest.mark.parametrize('name,hp', [
    ('popularity', {}), ('ease', {'lam': 3.0}), ('slim', {'l1': 1.0, 'l2': 3.0}),
    ('wmf', {'factors': 3, 'alpha': 4.0, 'lam': 1.0, 'iters': 3, 'cg_steps': 3}),
    ('cdae', {'hidden': 4, 'epochs': 1, 'batch_size': 32, 'fold_in_steps': 3})])
def test_saved_baseline_loads_and_scores_the_same(tmp_path, name, hp):
  x = _clicks(50, 12, seed=11)
  fitted = baselines.fit(name, x, hp)
  item_ids = np.arange(100, 112)
  baselines.save(tmp_path / name, fitted.name, fitted.hparams, fitted.arrays, item_ids, fitted.info)
  loaded, ids = baselines.load_fitted(tmp_path / name)
  assert loaded.name == name and loaded.hparams == fitted.hparams
  np.testing.assert_array_equal(ids, item_ids)
  new_users = _clicks(7, 12, seed=12)
  np.testing.assert_allclose(np.asarray(baselines.load(tmp_path / name)(new_users)),
                             np.asarray(fitted.score_fn(new_users)), rtol=1e-5, atol=1e-5)


def test_registry_errors():
  with pytest.raises(ValueError, match='unknown baseline'):
    baselines.fit('bpr', _clicks(), {})
  with pytest.raises(FileNotFoundError):
    baselines.load('/nonexistent/dir')
  assert len(baselines.grid('ease')) == 5
