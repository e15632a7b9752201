"""Recommending from a trained workdir: the API, the command and the export."""
import csv
import logging
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from vaecf import serving
from vaecf import checkpoints, distributed, evaluate, models, steps, train
from vaecf.config import base_config
from vaecf.data import EMBEDDED, load_split

REPO = Path(__file__).resolve().parents[1]


def tiny_config(cache: Path, name: str = 'multvae', epochs: int = 2):
  c = base_config()
  c.data.rating_threshold = 3.5
  c.data.cache_dir = str(cache)
  c.model.name = name
  c.model.hidden_dims = (32,) if name == 'multvae' else ()
  c.model.latent_dim = 8
  c.train.batch_size = 128
  c.train.epochs = epochs
  c.train.total_anneal_steps = 20
  return c


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(config, workdir, results, split) of a tiny Mult-VAE, trained once for the module."""
  root = tmp_path_factory.mktemp('rec')
  c = tiny_config(root / 'cache')
  split = load_split(c.data)[0]
  res = train.train_and_evaluate(c, root / 'wd', split=split)
  return c, root / 'wd', res, split


@pytest.fixture(scope='module')
def rec(trained):
  return serving.from_workdir(trained[1])


def _evaluator_scores(config, workdir, step, x):
  """Scores from the evaluator's own path, restored independently of vaecf.serving."""
  model = models.build(config, x.shape[1])
  params = checkpoints.manager(workdir).restore(step)['state']['params']
  for_params, _ = steps.make_scorer(model, distributed.make_mesh(), 2000)
  return np.asarray(for_params(params)(x)), params


def _histories(rec, x):
  return [rec.item_ids[x.indices[x.indptr[u]:x.indptr[u + 1]]].tolist() for u in range(x.shape[0])]


def test_best_checkpoint_by_default_and_evaluator_agrees(trained, rec):
  config, wd, res, split = trained
  assert rec.info['step'] == res['best_epoch']
  np.testing.assert_array_equal(rec.item_ids, split.item_ids)
  val = evaluate.evaluate(rec.scores, split.val_tr, split.val_te)
  assert val.mean('ndcg@100') == pytest.approx(res['val_ndcg@100'], rel=1e-5)
  ref, _ = _evaluator_scores(config, wd, res['best_epoch'], split.val_tr)
  np.testing.assert_allclose(rec.scores(split.val_tr), ref, rtol=1e-5, atol=1e-5)


def test_recommend_batch_is_the_evaluators_ranking_without_seen_items(trained, rec):
  config, wd, res, split = trained
  x = split.val_tr[:12]
  ref, _ = _evaluator_scores(config, wd, res['best_epoch'], x)
  recs = rec.recommend_batch(_histories(rec, x), n=20)
  masked = ref.copy()
  masked[x.nonzero()] = -np.inf
  for u, r in enumerate(recs):
    top = np.argsort(-masked[u], kind='stable')[:20]
    assert r.items == split.item_ids[top].tolist()
    np.testing.assert_allclose(r.scores, masked[u, top], rtol=1e-5, atol=1e-5)
    assert not set(r.items) & set(r.history) and not r.fallback and not r.unknown
  # Without exclusion the raw ranking comes back, the user's own items included.
  raw = rec.recommend_batch(_histories(rec, x), n=20, exclude_seen=False)
  for u, r in enumerate(raw):
    assert r.items == split.item_ids[np.argsort(-ref[u], kind='stable')[:20]].tolist()
  assert any(set(r.items) & set(r.history) for r in raw)


def test_command_batch_csv_agrees_with_the_api(trained, rec, tmp_path):
  split = trained[3]
  x = split.val_tr[:4]
  users = [f'u{u}' for u in split.val_user_ids[:4]]
  hist = _histories(rec, x)
  with open(tmp_path / 'in.csv', 'w') as f:
    f.write('user,item\n' + ''.join(f'{u},{i}\n' for u, h in zip(users, hist) for i in h))
    f.write(f'{users[0]},999999999\n')  # unknown: ignored, the row's ranking unchanged
  proc = subprocess.run(
      [sys.executable, '-m', 'vaecf.serving', f'--workdir={trained[1]}', '--n=7',
       f'--input={tmp_path / "in.csv"}', f'--output={tmp_path / "out.csv"}'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '999999999' in proc.stderr
  with open(tmp_path / 'out.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ['user', 'rank', 'item', 'score', 'title']
  for u, r in zip(users, rec.recommend_batch(hist, n=7)):
    mine = [row for row in rows if row['user'] == u]
    assert [int(row['rank']) for row in mine] == list(range(1, 8))
    assert [int(row['item']) for row in mine] == r.items
    np.testing.assert_allclose([float(row['score']) for row in mine], r.scores, rtol=1e-5)
    assert [row['title'] for row in mine] == r.titles


def test_command_single_history_shows_titles(trained, rec):
  proc = subprocess.run(
      [sys.executable, '-m', 'vaecf.serving', f'--workdir={trained[1]}', '--n=5',
       '--items=1,1,nope'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Toy Story (1995)' in proc.stdout
  assert 'Ignored (not in the catalogue): nope' in proc.stdout
  assert 'counted once): 1' in proc.stdout
  for title in rec.recommend([1], n=5).titles:
    assert title in proc.stdout


def test_unknown_ids_are_warned_ignored_and_listed(rec, caplog):
  a, b = rec.item_ids[:2].tolist()
  with caplog.at_level(logging.WARNING):
    r = rec.recommend([a, 'nope', 10 ** 12, str(b), True, 2.5, float(a)], n=10)
  assert 'nope' in caplog.text
  assert r.unknown == ['nope', 10 ** 12, True, 2.5] and r.history == [a, b]
  assert r.duplicates == [a]  # float(a) names the same item
  ref = rec.recommend([a, b], n=10)
  assert r.items == ref.items
  np.testing.assert_array_equal(r.scores, ref.scores)


def test_the_unknown_id_warning_gives_distinct_examples(rec, caplog):
  a = rec.item_ids[0].item()
  with caplog.at_level(logging.WARNING):
    rec.recommend_batch([[a, 'nope'], ['nope', a], ['nope'], ['gone']], n=3)
  (msg,) = [r.getMessage() for r in caplog.records if 'catalogue' in r.getMessage()]
  assert msg.startswith('4 item id(s)') and '(2 distinct, e.g. nope, gone)' in msg, msg


def test_duplicates_count_once(rec):
  a, b = rec.item_ids[3:5].tolist()
  r = rec.recommend([a, b, a, str(a)], n=10)
  assert r.duplicates == [a] and r.history == [a, b]
  np.testing.assert_array_equal(r.scores, rec.recommend([a, b], n=10).scores)


def test_empty_or_all_unknown_history_is_the_prior_mean(trained, rec):
  config, wd, res, split = trained
  empty, unknown = rec.recommend([], n=15), rec.recommend(['nope', -1], n=15)
  assert empty.fallback and unknown.fallback and unknown.unknown == ['nope', -1]
  assert np.isfinite(empty.scores).all() and empty.items == unknown.items
  np.testing.assert_array_equal(empty.scores, rec.recommend([], n=15).scores)
  # Mult-VAE: the decoder at z = 0, the prior mean of z.
  from vaecf.models import vae
  _, params = _evaluator_scores(config, wd, res['best_epoch'], split.val_tr[:1])
  prior = np.asarray(vae.decode(params, jnp.zeros((1, config.model.latent_dim))))[0]
  top = np.argsort(-prior, kind='stable')[:15]
  assert empty.items == split.item_ids[top].tolist()
  np.testing.assert_allclose(empty.scores, prior[top], rtol=1e-5, atol=1e-6)
  # The dense form gives the same fallback for an empty row (never NaN).
  dense = rec.scores(sp.csr_matrix((2, rec.n_items), dtype=np.float32))
  assert np.isfinite(dense).all()
  np.testing.assert_allclose(dense[0], prior, rtol=1e-5, atol=1e-6)


def test_n_larger_than_the_catalogue(rec):
  hist = rec.item_ids[:5].tolist()
  r = rec.recommend(hist, n=rec.n_items + 50)
  assert len(r.items) == len(set(r.items)) == rec.n_items - 5
  assert not set(r.items) & set(hist) and np.isfinite(r.scores).all()
  assert np.all(np.diff(r.scores) <= 0)
  assert len(rec.recommend(hist, n=rec.n_items + 50, exclude_seen=False).items) == rec.n_items
  with pytest.raises(ValueError, match='at least 1'):
    rec.recommend(hist, n=0)


def test_a_given_step_loads_and_a_missing_one_fails_clearly(trained):
  wd = trained[1]
  saved = checkpoints.manager(wd).all_steps()
  assert serving.from_workdir(wd, step=min(saved)).info['step'] == min(saved)
  with pytest.raises(FileNotFoundError, match='no checkpoint step 999'):
    serving.from_workdir(wd, step=999)


def _check_export(rec, x, out: Path):
  serving.export(rec, out)
  exported = serving.load_exported(out)
  rows = sp.vstack([x, sp.csr_matrix((1, rec.n_items), dtype=np.float32)]).tocsr()
  np.testing.assert_allclose(exported.scores(rows), rec.scores(rows), rtol=1e-6, atol=1e-6)
  hist = _histories(rec, x[:3]) + [[]]
  for a, b in zip(exported.recommend_batch(hist, n=10), rec.recommend_batch(hist, n=10)):
    assert a.items == b.items and a.titles == b.titles
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)
  return exported


def test_exported_function_equals_the_live_model(trained, rec, tmp_path):
  pytest.importorskip('flatbuffers', reason='jax.export serialisation needs flatbuffers')
  _check_export(rec, trained[3].val_tr[:20], tmp_path / 'export')
  # Serving needs neither the model code nor the trainer.
  code = ('import sys; from vaecf import serving; '
          f'r = serving.load_exported({str(tmp_path / "export")!r}).recommend([1], n=3); '
          'assert len(r.items) == 3 and r.titles, r; '
          "bad = [m for m in sys.modules if m.startswith(('vaecf.models', 'vaecf.train', 'vaecf.steps', 'vaecf.checkpoints', 'orbax', 'optax'))]; "
          'assert not bad, bad')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_multdae_workdir(tmp_path, trained):
  pytest.importorskip('flatbuffers', reason='jax.export serialisation needs flatbuffers')
  split = trained[3]
  c = tiny_config(Path(trained[0].data.cache_dir), 'multdae', epochs=1)
  res = train.train_and_evaluate(c, tmp_path / 'wd', split=split)
  rec = serving.from_workdir(tmp_path / 'wd')
  assert rec.info['model'] == 'multdae'
  val = evaluate.evaluate(rec.scores, split.val_tr, split.val_te)
  assert val.mean('ndcg@100') == pytest.approx(res['val_ndcg@100'], rel=1e-5)
  # Not a VAE: the fallback is the model's own score for an empty row.
  ref, _ = _evaluator_scores(c, tmp_path / 'wd', 1, sp.csr_matrix((1, rec.n_items)))
  np.testing.assert_allclose(rec.fallback, ref[0], rtol=1e-5, atol=1e-6)
  assert np.isfinite(rec.recommend([]).scores).all()
  _check_export(rec, split.val_tr[:8], tmp_path / 'export')


def test_baseline_workdir(tmp_path, trained):
  baselines = pytest.importorskip('vaecf.baselines')
  split = trained[3]
  fitted = baselines.fit('popularity', split.train, {})
  baselines.save(tmp_path / 'wd', fitted.name, fitted.hparams, fitted.arrays, split.item_ids, fitted.info)
  rec = serving.from_workdir(tmp_path / 'wd', titles=EMBEDDED)
  ref = evaluate.evaluate(fitted.score_fn, split.val_tr, split.val_te)
  got = evaluate.evaluate(rec.scores, split.val_tr, split.val_te)
  assert got.summary() == pytest.approx(ref.summary())
  counts = np.asarray(split.train.sum(0)).ravel()
  order = np.argsort(-counts, kind='stable')
  r = rec.recommend(split.item_ids[order[:3]].tolist(), n=5)
  np.testing.assert_array_equal(r.scores, counts[order[3:8]])  # the most popular unseen
  assert r.titles and all(r.titles)
  # Not a model: an empty history gets the baseline's own empty-row scores (popularity).
  assert rec.recommend([]).items == split.item_ids[order[:10]].tolist()
  with pytest.raises(ValueError, match='only models built by vaecf.models'):
    serving.export(rec, tmp_path / 'export')
