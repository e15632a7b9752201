"""Device-resident training data (vaecf/device_data.py): the batches it gathers are the host
pipeline's, array for array, and training on them is host-fed training to the bit."""
import json
import logging

import jax
import numpy as np
import pytest

from vaecf import (checkpoints, device_data, distributed, input_pipeline, loop, models, steps,
                   sweep, train)
from vaecf.config import ConfigError, base_config, validate
from vaecf.data import load_split
import test_train


def small_config(tmp_path, **train_kw):
  """test_train's small config, 3 epochs, in blocks of 3 steps (4 batches a pass: a block
  of 3 and one of 1)."""
  return test_train.small_config(tmp_path, **{'epochs': 3, 'steps_per_dispatch': 3,
                                              **train_kw})


@pytest.fixture(scope='module')
def split(tmp_path_factory):
  return load_split(small_config(tmp_path_factory.mktemp('data')).data)[0]


def _mesh(n):
  assert jax.device_count() >= n, 'conftest sets 4 fake CPU devices'
  return distributed.make_mesh(jax.devices()[:n])


def _equal_trees(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert np.asarray(x).shape == np.asarray(y).shape
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# 490 training users: 128 on 1 device (a last batch of 106), 100 on 2 (50 a shard, a last
# batch of 90), 150 on 4 (38 a shard, so 2 padding slots in every batch; a last of 40).
@pytest.mark.parametrize('n_dev,batch_size', [(1, 128), (2, 100), (4, 150)])
def test_every_device_batch_is_the_host_pipelines_for_the_same_order(split, n_dev, batch_size):
  mesh, x = _mesh(n_dev), split.train
  feed = device_data.DeviceData(x, mesh, batch_size, 5, [(1, 0), (2, 0), (2, 1)])
  order = device_data.epoch_order(x.shape[0], 5, 2, 1)
  assert sorted(order) == list(range(x.shape[0]))
  users = feed.users(5, 2, 1)
  np.testing.assert_array_equal(np.asarray(users).reshape(feed.n_batches, -1)[
      :, :batch_size].reshape(-1)[:len(order)], order)
  host = list(input_pipeline.order_batches(x, order, batch_size, mesh, feed.nnz))
  assert len(host) == feed.n_batches == -(-x.shape[0] // batch_size)
  for i, want in enumerate(host):
    got = feed.batch(users, i)
    _equal_trees(got, want)
    assert got.rows.sharding.is_equivalent_to(want.rows.sharding, 1)
  last = host[-1]
  assert np.asarray(last.user_mask).sum() == x.shape[0] - (feed.n_batches - 1) * batch_size
  # The fixed length holds the run's largest shard, which the host's own bucket fits.
  sizes = [np.asarray(b.vals).reshape(n_dev, -1).astype(bool).sum(1).max() for b in host]
  assert max(sizes) <= feed.largest <= feed.nnz
  with pytest.raises(ValueError, match='not one whose batches fixed'):
    feed.users(5, 3, 0)  # a pass the fixed length was not measured on


def test_the_order_is_a_function_of_seed_epoch_and_pass(split):
  n = split.train.shape[0]
  a = device_data.epoch_order(n, 5, 2, 1)
  np.testing.assert_array_equal(a, device_data.epoch_order(n, 5, 2, 1))
  for other in ((6, 2, 1), (5, 3, 1), (5, 2, 0)):
    assert not np.array_equal(a, device_data.epoch_order(n, *other)), other


def _trained(c, split, mesh, epochs, feed=None, nnz=None, points=None):
  """The train state after `epochs` epochs of train_epoch: device-fed with `feed`, else
  host-fed with the device order padded to `nnz`; a sweep's states with `points`."""
  model = models.build(c, split.n_items)
  opt = steps.make_optimizer(c)
  init_key = jax.random.fold_in(jax.random.key(c.train.seed), 0)
  trainee = (train._Single(c, split, mesh, model, opt, init_key) if points is None else
             sweep._Sweep(c, split, mesh, model, opt, init_key, points, 1))
  state, rows = trainee.init(), []
  active = [True] * len(trainee.labels)
  orders = lambda e, k: device_data.epoch_order(split.train.shape[0], c.train.seed, e, k)
  for epoch in range(1, epochs + 1):
    state, m = loop.train_epoch(trainee, state, active, split.train, epoch,
                                batch_size=c.train.batch_size, seed=c.train.seed,
                                epochs=epochs, feed=feed,
                                orders=None if feed else orders, nnz=nnz)
    rows.append(m)
  return jax.device_get(state), rows


# One device with a last block shorter than the others (4 batches in blocks of 3 and 1),
# four in one block of 4; each block length is a compile, so each case has few.
@pytest.mark.parametrize('n_dev,per_dispatch', [(1, 3), (4, 4)])
def test_device_fed_training_is_host_fed_training_to_the_bit(tmp_path, split, n_dev,
                                                             per_dispatch):
  c, mesh, epochs = small_config(tmp_path, steps_per_dispatch=per_dispatch), _mesh(n_dev), 2
  passes = [(e, 0) for e in range(1, epochs + 1)]
  feed = device_data.DeviceData(split.train, mesh, c.train.batch_size, c.train.seed, passes,
                                c.train.steps_per_dispatch)
  dev, dev_rows = _trained(c, split, mesh, epochs, feed=feed)
  host, host_rows = _trained(c, split, mesh, epochs, nnz=feed.nnz)
  assert int(dev['step']) == epochs * feed.n_batches
  _equal_trees(dev, host)
  assert dev_rows == host_rows
  if n_dev == 1:
    # The host's own per-batch padding (shard_rows' smallest bucket) trains the same bits:
    # padding nonzeros add exact zeros and the model's sums drop their row.
    host_bucketed, _ = _trained(c, split, mesh, epochs, nnz=None)
    _equal_trees(dev['params'], host_bucketed['params'])


def test_an_alternating_model_runs_device_resident_as_host_fed(tmp_path, split):
  c = small_config(tmp_path, batch_size=250, learning_rate=5e-4)
  c.model.name = 'recvae'
  for k, v in models.settings('recvae').model.items():
    c.model[k] = v
  c.model.hidden_dims = (16,) * 5
  c.model.latent_dim = 8
  mesh, model = _mesh(2), models.build(c, split.n_items)
  passes = [(1, k) for k in range(sum(p.passes for p in model.phases))]
  feed = device_data.DeviceData(split.train, mesh, c.train.batch_size, c.train.seed, passes,
                                c.train.steps_per_dispatch)
  dev, dev_rows = _trained(c, split, mesh, 1, feed=feed)
  host, host_rows = _trained(c, split, mesh, 1, nnz=feed.nnz)
  assert len(model.phases) > 1 and 'model_state' in dev
  _equal_trees(dev, host)
  assert dev_rows == host_rows and all(np.isfinite(v) for v in dev_rows[-1][0].values())


def test_a_sweep_runs_device_resident_as_host_fed(tmp_path, split):
  # Its steps are partials over the models' hyperparameters, which the block traces.
  c, mesh = small_config(tmp_path, steps_per_dispatch=4), _mesh(1)
  points = [{'anneal_cap': 0.1}, {'anneal_cap': 1.0}]
  feed = device_data.DeviceData(split.train, mesh, c.train.batch_size, c.train.seed, [(1, 0)],
                                c.train.steps_per_dispatch)
  dev, dev_rows = _trained(c, split, mesh, 1, feed=feed, points=points)
  host, host_rows = _trained(c, split, mesh, 1, nnz=feed.nnz, points=points)
  _equal_trees(dev, host)
  assert dev_rows == host_rows and dev_rows[0][0] != dev_rows[0][1]


def test_a_run_on_device_data_says_so_and_resumes_to_the_same_parameters(tmp_path, split,
                                                                           caplog):
  c = small_config(tmp_path, device_data='on', epochs=2)
  with caplog.at_level(logging.INFO, logger='vaecf.device_data'):
    full = train.train_and_evaluate(c, tmp_path / 'full', split=split)
  assert full['input'] == 'device'
  assert json.loads((tmp_path / 'full' / 'results.json').read_text())['input'] == 'device'
  lines = [r.message for r in caplog.records if r.message.startswith('input:')]
  assert len(lines) == 1 and 'device-resident' in lines[0], lines
  train.train_and_evaluate(c, tmp_path / 'resumed', split=split, stop_after_epoch=1)
  resumed = train.train_and_evaluate(c, tmp_path / 'resumed', split=split)
  assert resumed['input'] == 'device' and resumed['test'] == full['test']
  _equal_trees(checkpoints.load_state(tmp_path / 'full')[0]['params'],
               checkpoints.load_state(tmp_path / 'resumed')[0]['params'])


def test_data_over_the_budget_falls_back_to_the_host_pipeline(tmp_path, split, caplog):
  c = small_config(tmp_path, device_data='on', device_data_budget_gb=1e-6, epochs=1)
  with caplog.at_level(logging.INFO, logger='vaecf.device_data'):
    res = train.train_and_evaluate(c, tmp_path / 'wd', split=split)
  assert res['input'] == 'host'
  lines = [r.message for r in caplog.records if r.message.startswith('input:')]
  assert len(lines) == 1 and 'host pipeline' in lines[0], lines
  assert 'over train.device_data_budget_gb=1e-06' in lines[0]


def test_auto_is_the_host_pipeline_on_a_cpu_and_off_is_off(split):
  mesh = _mesh(1)
  on, why = device_data.choose('auto', split.train, mesh, 128, 2.0)
  assert not on and 'CPU' in why
  assert not device_data.choose('off', split.train, mesh, 128, 2.0)[0]
  assert device_data.choose('on', split.train, mesh, 128, 2.0)[0]
  assert base_config().train.device_data == 'auto'  # today's CPU runs: the host pipeline
  assert loop.Plan.from_config(base_config()).device_data == 'auto'


@pytest.mark.parametrize('key,value,match', [
    ('device_data', 'yes', r"train.device_data='yes': one of \('auto', 'on', 'off'\)"),
    ('device_data_budget_gb', 0.0, r'train.device_data_budget_gb=0.0: a finite number > 0'),
    ('device_data_budget_gb', float('inf'), r'train.device_data_budget_gb=inf'),
    ('steps_per_dispatch', 0, r'train.steps_per_dispatch=0: an integer >= 1'),
])
def test_bad_device_data_settings_are_named(key, value, match):
  c = base_config()
  c.train[key] = value
  with pytest.raises(ConfigError, match=match):
    validate(c)


def test_the_host_pipeline_with_its_own_order_is_unchanged(split):
  # run_pass without an order is input_pipeline.epoch_batches, batch for batch.
  mesh = _mesh(2)
  order = input_pipeline.epoch_order(split.train.shape[0], 3, 1)
  got = list(input_pipeline.order_batches(split.train, order, 128, mesh))
  want = list(input_pipeline.epoch_batches(split.train, 128, 3, 1, mesh))
  for g, w in zip(got, want, strict=True):
    _equal_trees(g, w)
