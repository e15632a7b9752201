"""The evaluator against an independent NumPy reference of docs/protocol.md's metrics."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from vaecf import sparse
from vaecf.evaluate import evaluate

METRICS = (('recall', 20), ('recall', 50), ('ndcg', 100), ('recall', 3), ('ndcg', 5),
           ('ndcg', 1))


# ----------------------------------------------------------------------------------------
# Reference.
# ----------------------------------------------------------------------------------------

def _perm_scores(fold_indices: np.ndarray, n_items: int) -> np.ndarray:
  """Tie-free scores that depend only on a user's fold-in items: a permutation."""
  seed = [n_items] + sorted(int(i) for i in fold_indices)
  return np.random.default_rng(seed).permutation(n_items).astype(np.float32)


def perm_score_fn(batch: sp.csr_matrix):
  n_items = batch.shape[1]
  return np.stack([_perm_scores(batch[r].indices, n_items) for r in range(batch.shape[0])])


def reference(scores_fn, fold_in: sp.csr_matrix, targets: sp.csr_matrix, metrics):
  """(rows with targets, {name: per-user values}) straight from docs/protocol.md."""
  n_users, n_items = fold_in.shape
  rows, out = [], {f'{kind}@{k}': [] for kind, k in metrics}
  for u in range(n_users):
    tgt = set(targets[u].indices.tolist())
    if not tgt:
      continue
    rows.append(u)
    fold = fold_in[u].indices
    scores = np.asarray(scores_fn(fold), np.float64)
    candidates = np.setdiff1d(np.arange(n_items), fold)  # fold-in removed from ranking
    ranked = candidates[np.argsort(-scores[candidates])]
    for kind, k in metrics:
      top = ranked[:k]
      rel = np.array([i in tgt for i in top], np.float64)
      if kind == 'recall':
        value = rel.sum() / min(k, len(tgt))
      else:
        dcg = sum(rel[r - 1] / np.log2(r + 1) for r in range(1, len(top) + 1))
        idcg = sum(1.0 / np.log2(r + 1) for r in range(1, min(len(tgt), k) + 1))
        value = dcg / idcg
      out[f'{kind}@{k}'].append(value)
  return np.array(rows, np.int64), {k: np.array(v) for k, v in out.items()}


def _random_data(seed=0, n_users=150, n_items=300):
  """Fold-in and disjoint targets with empty rows and short/long target lists."""
  rng = np.random.default_rng(seed)
  fold, tgt = np.zeros((n_users, n_items), np.float32), np.zeros((n_users, n_items), np.float32)
  for u in range(n_users):
    kind = u % 6
    n_fold = 0 if kind == 0 else int(rng.integers(1, 60))
    n_tgt = {1: 0, 2: int(rng.integers(1, 4)), 3: int(rng.integers(101, 140))}.get(
        kind, int(rng.integers(1, 40)))
    items = rng.permutation(n_items)
    fold[u, items[:n_fold]] = 1
    tgt[u, items[n_fold:n_fold + n_tgt]] = 1
  return sp.csr_matrix(fold), sp.csr_matrix(tgt)


def _assert_matches_reference(result, fold, tgt, metrics):
  rows, ref = reference(lambda f: _perm_scores(f, fold.shape[1]), fold, tgt, metrics)
  np.testing.assert_array_equal(result.rows, rows)
  summary = result.summary()
  for name, want in ref.items():
    got = result.per_user[name]
    assert got.shape == want.shape, name
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=name)
    assert result.mean(name) == pytest.approx(want.mean(), abs=1e-6)
    se = want.std() / np.sqrt(len(want))
    assert result.stderr(name) == pytest.approx(se, abs=1e-6)
    assert summary[name] == pytest.approx(want.mean(), abs=1e-6)
    assert summary[name + '_se'] == pytest.approx(se, abs=1e-6)


# ----------------------------------------------------------------------------------------
# evaluate.
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def data():
  return _random_data()


def test_data_covers_edge_cases(data):
  fold, tgt = data
  n_fold, n_tgt = np.diff(fold.indptr), np.diff(tgt.indptr)
  assert (n_fold == 0).any() and (n_tgt == 0).any()
  assert ((n_fold == 0) & (n_tgt > 0)).any()
  assert ((n_tgt > 0) & (n_tgt < 20)).any() and (n_tgt > 100).any()
  assert fold.multiply(tgt).nnz == 0


@pytest.mark.parametrize('batch_size', [7, 64, 1000])
def test_matches_reference(data, batch_size):
  fold, tgt = data
  result = evaluate(perm_score_fn, fold, tgt, metrics=METRICS, batch_size=batch_size)
  assert set(result.per_user) == {f'{k}@{n}' for k, n in METRICS}
  assert result.n_users == int((np.diff(tgt.indptr) > 0).sum())
  _assert_matches_reference(result, fold, tgt, METRICS)


def test_default_metrics_and_jax_scores(data):
  fold, tgt = data
  result = evaluate(lambda b: jnp.asarray(perm_score_fn(b)), fold, tgt, batch_size=50)
  assert set(result.per_user) == {'recall@20', 'recall@50', 'ndcg@100'}
  _assert_matches_reference(result, fold, tgt, (('recall', 20), ('recall', 50),
                                                ('ndcg', 100)))


def test_k_larger_than_catalogue():
  fold, tgt = _random_data(seed=3, n_users=30, n_items=12)
  metrics = (('recall', 20), ('ndcg', 100), ('ndcg', 4))
  result = evaluate(perm_score_fn, fold, tgt, metrics=metrics, batch_size=8)
  _assert_matches_reference(result, fold, tgt, metrics)
  np.testing.assert_allclose(result.per_user['recall@20'], 1.0, atol=1e-6)


def test_no_user_has_targets():
  fold, _ = _random_data(seed=4, n_users=10, n_items=30)
  result = evaluate(perm_score_fn, fold, sp.csr_matrix(fold.shape, dtype=np.float32))
  assert result.n_users == 0 and len(result.per_user['ndcg@100']) == 0


def test_wrong_shape_raises(data):
  fold, tgt = data
  with pytest.raises(ValueError):
    evaluate(lambda b: np.zeros((b.shape[0], b.shape[1] - 1), np.float32), fold, tgt,
             batch_size=64)
  with pytest.raises(ValueError):
    evaluate(lambda b: np.zeros((b.shape[0] + 1, b.shape[1]), np.float32), fold, tgt,
             batch_size=64)
  with pytest.raises(ValueError):
    evaluate(lambda b: np.zeros(b.shape[1], np.float32), fold, tgt, batch_size=64)
  with pytest.raises(ValueError):
    evaluate(perm_score_fn, fold[:10], tgt[:11])


def _perfect_result():
  """Each user's fold-in holds a unique tag column, so score_fn can find its targets."""
  rng = np.random.default_rng(5)
  n_users, n_items = 90, 400
  fold, tgt = np.zeros((n_users, n_items), np.float32), np.zeros((n_users, n_items), np.float32)
  for u in range(n_users):
    fold[u, u] = 1
    items = n_users + rng.permutation(n_items - n_users)
    n_fold = int(rng.integers(0, 20))
    n_tgt = [1, 2, 7, 19, 20, 21, 50, 99, 100, 101, 200][u % 11]
    fold[u, items[:n_fold]] = 1
    tgt[u, items[n_fold:n_fold + n_tgt]] = 1

  def perfect(batch):
    out = np.zeros(batch.shape, np.float32)
    for r in range(batch.shape[0]):
      tags = batch[r].indices[batch[r].indices < n_users]
      if len(tags):
        out[r] = tgt[int(tags[0])]
    return out

  metrics = (('recall', 20), ('recall', 50), ('recall', 1), ('ndcg', 100), ('ndcg', 50),
             ('ndcg', 10))
  result = evaluate(perfect, sp.csr_matrix(fold), sp.csr_matrix(tgt), metrics=metrics,
                    batch_size=32)
  assert result.n_users == n_users
  return result


@pytest.mark.parametrize('kind', ['recall', 'ndcg'])
def test_perfect_scores_give_exactly_one(kind):
  result = _perfect_result()
  for name, values in result.per_user.items():
    if name.startswith(kind):
      np.testing.assert_array_equal(values, np.ones(len(values)), err_msg=name)


# ----------------------------------------------------------------------------------------
# sparse helpers.
# ----------------------------------------------------------------------------------------

def _random_csr(rng, n_rows, n_cols, density=0.1):
  dense = (rng.random((n_rows, n_cols)) < density) * rng.integers(1, 9, (n_rows, n_cols))
  dense[rng.random(n_rows) < 0.2] = 0  # some empty rows
  return sp.csr_matrix(dense.astype(np.float32)), dense.astype(np.float32)


def _unpad(idx, val, n_cols):
  dense = np.zeros((idx.shape[0], n_cols), np.float32)
  rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1]).reshape(idx.shape)
  keep = val > 0
  dense[rows[keep], idx[keep]] = val[keep]
  return dense


def test_bucket_length():
  """Fits n, respects the minimum, <= 25% padding, at most 4 sizes per octave."""
  for minimum in (1, 8, 64):
    prev = 0
    for n in range(0, 5000):
      m = max(n, minimum, 1)
      got = sparse.bucket_length(n, minimum)
      assert m <= got <= 1.25 * m, (n, minimum, got)
      assert got >= prev, (n, minimum)
      assert sparse.bucket_length(got, minimum) == got
      prev = got
  sizes = {sparse.bucket_length(n) for n in range(1, 2**12 + 1)}
  for b in range(4, 13):  # octaves (2^(b-1), 2^b]
    assert len({x for x in sizes if 2**(b - 1) < x <= 2**b}) <= 4, b
  assert sparse.bucket_length(0) == 8


@pytest.mark.parametrize('seed', range(4))
def test_to_padded_round_trip(seed):
  rng = np.random.default_rng(seed)
  x, dense = _random_csr(rng, int(rng.integers(1, 40)), int(rng.integers(5, 200)),
                         density=float(rng.uniform(0.01, 0.4)))
  idx, val = sparse.to_padded(x)
  lengths = (dense != 0).sum(1)
  assert idx.dtype == np.int32 and val.dtype == np.float32
  assert idx.shape == val.shape == (x.shape[0], sparse.bucket_length(lengths.max()))
  assert idx.shape[1] >= lengths.max()
  np.testing.assert_array_equal(_unpad(idx, val, x.shape[1]), dense)
  for r, n in enumerate(lengths):
    # Left-aligned row entries in column order, then (index 0, value 0) padding.
    np.testing.assert_array_equal(idx[r, :n], np.flatnonzero(dense[r]))
    np.testing.assert_array_equal(val[r, :n], dense[r][dense[r] != 0])
    assert np.all(idx[r, n:] == 0) and np.all(val[r, n:] == 0)
  # A fixed length works if it fits and raises otherwise.
  idx2, val2 = sparse.to_padded(x, length=int(lengths.max()) + 3)
  assert idx2.shape[1] == lengths.max() + 3
  np.testing.assert_array_equal(_unpad(idx2, val2, x.shape[1]), dense)
  if lengths.max() > 0:
    with pytest.raises(ValueError):
      sparse.to_padded(x, length=int(lengths.max()) - 1)


def test_to_padded_empty():
  idx, val = sparse.to_padded(sp.csr_matrix((3, 10), dtype=np.float32))
  assert idx.shape == (3, 8) and not val.any() and not idx.any()
  idx, val = sparse.to_padded(sp.csr_matrix((0, 10), dtype=np.float32))
  assert idx.shape[0] == 0


@pytest.mark.parametrize('extra', [0, 1, 13])
def test_pad_rows_round_trip(extra):
  rng = np.random.default_rng(extra)
  x, dense = _random_csr(rng, 11, 23)
  padded = sparse.pad_rows(x, 11 + extra)
  assert padded.shape == (11 + extra, 23)
  want = np.vstack([dense, np.zeros((extra, 23), np.float32)])
  np.testing.assert_array_equal(padded.toarray(), want)
  idx, val = sparse.to_padded(padded)
  np.testing.assert_array_equal(_unpad(idx, val, 23), want)
  with pytest.raises(ValueError):
    sparse.pad_rows(x, 10)


def test_batches_cover_rows():
  rng = np.random.default_rng(9)
  x, dense = _random_csr(rng, 23, 17)
  seen = []
  for start, stop, b in sparse.batches(x, 5):
    assert b.shape == (5, 17)
    np.testing.assert_array_equal(b.toarray()[:stop - start], dense[start:stop])
    assert not b.toarray()[stop - start:].any()
    seen.append((start, stop))
  assert seen == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
