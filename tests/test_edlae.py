"""EDLAE against float64 NumPy references written from the paper's equations."""
import numpy as np
import pytest
import scipy.sparse as sp

from vaecf import baselines, evaluate
from vaecf.baselines import edlae

SHAPES = [(40, 15), (12, 60)]  # more users than items (primal), fewer (dual)


def _clicks(n_users=40, n_items=15, density=0.3, seed=0):
  x = sp.random(n_users, n_items, density, format='csr', random_state=seed, dtype=np.float32)
  x.data[:] = 1.0
  return x


def _np_reference(x, lam, p, variant):
  """Paper Eq. 9 (Lambda) and Eq. 8 (EDLAE) / B = (G + Lambda)^-1 G (DLAE), by inv."""
  d = x.toarray().astype(np.float64)
  g = d.T @ d
  big_lambda = np.diag(p / (1 - p) * np.diag(g) + lam)
  prec = np.linalg.inv(g + big_lambda)
  if variant == 'edlae':
    return np.eye(len(g)) - prec @ np.diag(1 / np.diag(prec))
  return np.linalg.inv(g + big_lambda) @ g


@pytest.mark.parametrize('variant', ['edlae', 'dlae'])
@pytest.mark.parametrize('form', ['auto', 'primal', 'dual'])
@pytest.mark.parametrize('n_users,n_items', SHAPES)
def test_edlae_equals_the_papers_closed_form(variant, form, n_users, n_items):
  x, hp = _clicks(n_users, n_items), {'lam': 5.0, 'p': 0.3, 'variant': variant, 'form': form}
  expect = _np_reference(x, 5.0, 0.3, variant)
  fitted = baselines.fit('edlae', x, hp)
  want_form = form if form != 'auto' else ('dual' if n_users < n_items else 'primal')
  assert fitted.info == {'form': want_form, 'variant': variant}
  got = fitted.arrays['weights']
  assert got.dtype == np.float32
  if variant == 'edlae':
    assert np.all(np.diag(got) == 0)
  np.testing.assert_allclose(got, expect, atol=2e-5)
  d = x.toarray().astype(np.float64)
  np.testing.assert_allclose(np.asarray(fitted.score_fn(x[:5])), d[:5] @ expect, atol=1e-4)


@pytest.mark.parametrize('variant', ['edlae', 'dlae'])
@pytest.mark.parametrize('n_users,n_items', SHAPES)
def test_primal_and_dual_agree(variant, n_users, n_items):
  x = _clicks(n_users, n_items, seed=1)
  ws = [baselines.fit('edlae', x, {'lam': 2.0, 'p': 0.5, 'variant': variant, 'form': f})
        .arrays['weights'] for f in ('primal', 'dual')]
  np.testing.assert_allclose(ws[0], ws[1], atol=2e-5)


def test_dual_precision_is_the_inverse_with_a_diagonal_lambda():
  x = _clicks(10, 30, seed=2)
  lam_I = edlae.penalty(x, 1.5, 0.4)
  d = x.toarray().astype(np.float64)
  np.testing.assert_allclose(edlae.dual_precision(x, lam_I) @ (d.T @ d + np.diag(lam_I)),
                             np.eye(30), atol=1e-10)


def test_edlae_columns_are_ridge_regressions_on_the_other_items():
  # Full emphasis: column j regresses item j on the items other than j, each item i
  # penalised by Lambda_ii; solved here column by column, with no P at all.
  x, lam, p = _clicks(40, 15, seed=3), 4.0, 0.25
  d = x.toarray().astype(np.float64)
  lam_I = p / (1 - p) * (d * d).sum(0) + lam
  got = baselines.fit('edlae', x, {'lam': lam, 'p': p}).arrays['weights']
  for j in range(15):
    rest = np.arange(15) != j
    xr = d[:, rest]
    col = np.linalg.solve(xr.T @ xr + np.diag(lam_I[rest]), xr.T @ d[:, j])
    np.testing.assert_allclose(got[rest, j], col, atol=2e-5)


@pytest.mark.parametrize('n_users,n_items', SHAPES)
def test_p_zero_gives_ease_and_ridge_regression(n_users, n_items):
  x, lam = _clicks(n_users, n_items, seed=4), 7.0
  d = x.toarray().astype(np.float64)
  # EDLAE at p = 0 is EASE with the same lam (Lambda = lam I in Eq. 8).
  np.testing.assert_allclose(
      baselines.fit('edlae', x, {'lam': lam, 'p': 0.0}).arrays['weights'],
      baselines.fit('ease', x, {'lam': lam}).arrays['weights'], atol=2e-6)
  # DLAE at p = 0 is ridge regression of X on X.
  ridge = np.linalg.solve(d.T @ d + lam * np.eye(n_items), d.T @ d)
  np.testing.assert_allclose(
      baselines.fit('edlae', x, {'lam': lam, 'p': 0.0, 'variant': 'dlae'}).arrays['weights'],
      ridge, atol=2e-5)


def test_dlae_minimises_the_expected_dropout_loss():
  # Lambda is what dropout induces: averaging the normal equations of the loss over every
  # dropout mask (kept inputs scaled by 1/(1-p)), enumerated exactly on 5 items, gives
  # the same B as the closed form, with no Lambda in sight.
  x, p, lam = _clicks(30, 5, density=0.5, seed=5), 0.4, 0.5
  d = x.toarray().astype(np.float64)
  masks = (np.arange(32)[:, None] >> np.arange(5)) & 1  # keep (1) or drop (0) each item
  prob = np.prod(np.where(masks, 1 - p, p), axis=1)
  zz, zx = np.zeros((5, 5)), np.zeros((5, 5))
  for q, m in zip(prob, masks):
    z = d * m / (1 - p)  # every user gets the same mask: the average is over masks alike
    zz += q * z.T @ z
    zx += q * z.T @ d
  expect = np.linalg.solve(zz + lam * np.eye(5), zx)
  got = baselines.fit('edlae', x, {'lam': lam, 'p': p, 'variant': 'dlae'}).arrays['weights']
  np.testing.assert_allclose(got, expect, atol=2e-5)


def test_primal_and_dual_give_the_same_metrics():
  # Dense enough that no two items share a training column: exact score ties (which
  # rounding breaks either way) would make the ranking, not the forms, differ.
  x = _clicks(30, 80, density=0.3, seed=6)
  fold_in, targets = _clicks(25, 80, density=0.1, seed=7), _clicks(25, 80, density=0.05, seed=8)
  res = [evaluate.evaluate(baselines.fit('edlae', x, {'lam': 2.0, 'p': 0.33, 'form': f})
                           .score_fn, fold_in, targets).summary() for f in ('primal', 'dual')]
  for k in res[0]:
    assert abs(res[0][k] - res[1][k]) < 1e-6, (k, res)


def test_saved_edlae_loads_and_scores_the_same(tmp_path):
  x = _clicks(50, 12, seed=9)
  fitted = baselines.fit('edlae', x, {'lam': 3.0, 'p': 0.25})
  item_ids = np.arange(100, 112)
  baselines.save(tmp_path / 'm', fitted.name, fitted.hparams, fitted.arrays, item_ids,
                 fitted.info)
  loaded, ids = baselines.load_fitted(tmp_path / 'm')
  assert loaded.name == 'edlae' and loaded.hparams == fitted.hparams
  assert loaded.info == fitted.info
  np.testing.assert_array_equal(ids, item_ids)
  new_users = _clicks(7, 12, seed=10)
  np.testing.assert_allclose(np.asarray(baselines.load(tmp_path / 'm')(new_users)),
                             np.asarray(fitted.score_fn(new_users)), rtol=1e-5, atol=1e-5)


def test_grid_is_registered_and_valid():
  assert 'edlae' in baselines.NAMES
  grid = baselines.grid('edlae')
  assert len(grid) == len({tuple(sorted(h.items())) for h in grid}) > 1
  for hp in grid:
    edlae.check_hparams(hp)


@pytest.mark.parametrize('hp,match', [
    ({'lam': 1.0, 'p': 1.0}, r'p must be in \[0, 1\)'),
    ({'lam': 1.0, 'p': -0.1}, r'p must be in \[0, 1\)'),
    ({'lam': 1.0, 'p': float('nan')}, r'p must be in \[0, 1\)'),
    ({'lam': 0.0, 'p': 0.3}, 'lam must be a finite number > 0'),
    ({'lam': -5.0, 'p': 0.3}, 'lam must be a finite number > 0'),
    ({'lam': float('inf'), 'p': 0.3}, 'lam must be a finite number > 0'),
    ({'lam': 1.0}, r"missing \['p'\]"),
    ({'lam': 1.0, 'p': 0.3, 'variant': 'dae'}, 'variant'),
    ({'lam': 1.0, 'p': 0.3, 'form': 'svd'}, 'form'),
])
def test_bad_hyperparameters_are_refused(hp, match):
  with pytest.raises(ValueError, match=match):
    baselines.fit('edlae', _clicks(), hp)
