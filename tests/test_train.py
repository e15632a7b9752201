"""Training: data parallelism, resumption, checkpoints, guard rails."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from vaecf import checkpoints, distributed, evaluate, input_pipeline, models, steps, train
from vaecf.config import base_config
from vaecf.data import load_split

REPO = Path(__file__).resolve().parents[1]


def small_config(tmp_path, **train_kw):
  c = base_config()
  c.data.rating_threshold = 3.5
  c.data.cache_dir = str(tmp_path / 'cache')
  c.model.hidden_dims = (32,)
  c.model.latent_dim = 8
  c.train.batch_size = 128
  c.train.epochs = 4
  c.train.total_anneal_steps = 20
  for k, v in train_kw.items():
    c.train[k] = v
  return c


@pytest.fixture(scope='module')
def embedded_split(tmp_path_factory):
  c = small_config(tmp_path_factory.mktemp('data'))
  return load_split(c.data)[0]


def _leaves_close(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize('name', ['multvae', 'multdae'])
def test_four_device_step_equals_single_device(tmp_path, embedded_split, name):
  assert jax.device_count() == 4, 'conftest sets 4 fake CPU devices'
  c = small_config(tmp_path)
  c.model.name = name
  model = models.build(c, embedded_split.n_items)
  # Plain SGD: Adam is invariant to the gradient's scale, so it would hide a wrong
  # cross-device average, and it amplifies rounding noise on near-zero gradients.
  opt = optax.sgd(0.5)
  sched = steps.schedule_from_config(c)
  params, losses = {}, {}
  for n_dev in (1, 4):
    mesh = distributed.make_mesh(jax.devices()[:n_dev])
    state = steps.init_state(model, opt, jax.random.key(0))
    step = steps.make_train_step(model, opt, mesh, seed=3)
    for i in range(3):
      rows = embedded_split.train[i * 7:(i + 1) * 7]  # 7 users: padding on 4 devices
      state, m = step(state, input_pipeline.global_batch(rows, mesh, -(-7 // n_dev)), sched)
    params[n_dev] = jax.device_get(state['params'])
    losses[n_dev] = float(m['loss'])
  assert losses[1] == pytest.approx(losses[4], rel=1e-5)
  _leaves_close(params[1], params[4])


def test_beta_annealing_and_constant():
  c = base_config()
  sched = steps.schedule_from_config(c)
  got = [float(steps.beta_at(np.int32(s), sched)) for s in (0, 1000, 40000, 10 ** 6)]
  np.testing.assert_allclose(got, [0.0, 0.005, 0.2, 0.2], rtol=1e-6)
  c.train.constant_beta = 0.7
  assert float(steps.beta_at(np.int32(5), steps.schedule_from_config(c))) == pytest.approx(0.7)


def test_killed_run_resumes_to_the_same_parameters(tmp_path, embedded_split):
  c = small_config(tmp_path)
  full = train.train_and_evaluate(c, tmp_path / 'full', split=embedded_split)
  train.train_and_evaluate(c, tmp_path / 'resumed', split=embedded_split, stop_after_epoch=2)
  assert len((tmp_path / 'resumed' / 'metrics.jsonl').read_text().splitlines()) == 2
  resumed = train.train_and_evaluate(c, tmp_path / 'resumed', split=embedded_split)
  assert resumed['best_epoch'] == full['best_epoch']
  assert resumed['test'] == pytest.approx(full['test'], rel=1e-5)
  def last_params(wd):
    return checkpoints.load_state(wd)[0]['params']
  _leaves_close(last_params(tmp_path / 'full'), last_params(tmp_path / 'resumed'))
  lines = (tmp_path / 'resumed' / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(l)['epoch'] for l in lines] == [1, 2, 3, 4]


def test_best_checkpoint_restores_and_scores_the_same(tmp_path, embedded_split):
  c = small_config(tmp_path, epochs=3)
  res = train.train_and_evaluate(c, tmp_path / 'wd', split=embedded_split)
  model = models.build(c, embedded_split.n_items)
  mngr = checkpoints.manager(tmp_path / 'wd')
  assert res['best_epoch'] in mngr.all_steps()
  params = checkpoints.load_state(tmp_path / 'wd', res['best_epoch'])[0]['params']
  mesh = distributed.make_mesh()
  for_params, batch = steps.make_scorer(model, mesh, 2000)
  val = train.evaluate_params(for_params, batch, params, embedded_split, 'val')
  assert val.mean('ndcg@100') == pytest.approx(res['val_ndcg@100'], rel=1e-5)
  rows = [json.loads(l) for l in (tmp_path / 'wd' / 'metrics.jsonl').read_text().splitlines()]
  assert max(r['val_ndcg@100'] for r in rows) == pytest.approx(res['val_ndcg@100'])


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoints(tmp_path, embedded_split,
                                                             monkeypatch):
  c = small_config(tmp_path)
  wd = tmp_path / 'wd'
  train.train_and_evaluate(c, wd, split=embedded_split, stop_after_epoch=1)
  from vaecf.models import registry
  real = registry._FACTORIES['multvae']

  def poisoned(config, n_items):
    m = real(config, n_items)
    def loss(params, x, key, beta):
      l, aux = m.loss(params, x, key, beta)
      return l * np.nan, aux
    return models.Model(name=m.name, init=m.init, loss=loss, score=m.score, uses_beta=True)

  monkeypatch.setitem(registry._FACTORIES, 'multvae', poisoned)
  with pytest.raises(train.TrainingDiverged, match='non-finite training loss at epoch 2'):
    train.train_and_evaluate(c, wd, split=embedded_split)
  mngr = checkpoints.manager(wd)
  assert mngr.all_steps() == [1]
  assert np.isfinite(jax.tree.leaves(checkpoints.load_state(wd, 1)[0]['params'])[0]).all()


def test_resuming_with_another_config_is_refused(tmp_path, embedded_split):
  c = small_config(tmp_path, epochs=1)
  train.train_and_evaluate(c, tmp_path / 'wd', split=embedded_split)
  c.train.learning_rate = 0.5
  with pytest.raises(ValueError, match='train.learning_rate'):
    train.train_and_evaluate(c, tmp_path / 'wd', split=embedded_split)


def test_mistyped_config_key_fails(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'vaecf.main', '--config=configs/default.py',
       f'--workdir={tmp_path}', '--config.train.epoch=3'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert 'epoch' in proc.stderr and not (tmp_path / 'checkpoints').exists()


@pytest.mark.slow
def test_short_run_on_ml100k_beats_popularity(tmp_path, shared_data):
  c = base_config()
  c.data.name = 'ml-100k'
  c.data.path = str(shared_data / 'ml-100k')
  c.data.rating_threshold = 3.5
  c.data.n_heldout_users = 100
  c.data.cache_dir = str(tmp_path / 'cache')
  c.train.epochs = 30
  c.train.batch_size = 100
  split, _ = load_split(c.data)
  res = train.train_and_evaluate(c, tmp_path / 'wd', split=split)
  popularity = np.asarray(split.train.sum(0)).ravel()
  pop = evaluate.evaluate(lambda x: np.tile(popularity, (x.shape[0], 1)), split.val_tr,
                          split.val_te)
  assert res['val_ndcg@100'] > pop.mean('ndcg@100') + 0.02, (res, pop.summary())


def test_tied_validation_keeps_the_epoch_the_trainer_restores(tmp_path):
  from vaecf import checkpoints as ck
  mngr = ck.manager(tmp_path, keep_latest=1)
  state = {'w': np.zeros(3, np.float32)}
  best = {'epoch': 0}
  for epoch, val in enumerate([0.1, 0.3, 0.3, 0.2], start=1):
    if val > best.get('v', -1):
      best = {'epoch': epoch, 'v': val}
    ck.save(mngr, epoch, {'w': np.full(3, epoch, np.float32)}, {'best': best}, val)
    mngr.wait_until_finished()
  assert sorted(mngr.all_steps()) == [2, 4]  # the first of the tied epochs, and the latest
  assert ck.load_state(tmp_path, 2)[0]['w'][0] == 2
