"""Parallel beta sweeps equal single runs; the paper's beta selection; the plot command."""
import json
import math

import jax
import numpy as np
import optax
import pytest

from vaecf import distributed, input_pipeline, models, steps, sweep, train
from vaecf.config import base_config
from vaecf.data import load_split
from vaecf.workdir import read_metrics


def small_config(tmp_path, mode='cap', values=(0.0, 0.3, 1.0)):
  c = base_config()
  c.data.rating_threshold = 3.5
  c.data.cache_dir = str(tmp_path / 'cache')
  c.model.hidden_dims = (32,)
  c.model.latent_dim = 8
  c.train.batch_size = 128
  c.train.epochs = 2
  c.train.total_anneal_steps = 4  # beta moves within the few steps a test runs
  c.sweep.mode = mode
  c.sweep.caps = values
  return c


@pytest.fixture(scope='module')
def embedded_split(tmp_path_factory):
  return load_split(small_config(tmp_path_factory.mktemp('data')).data)[0]


def _unstack(tree, m: int):
  return jax.tree.map(lambda a: a[m], tree)


def _leaves_close(a, b, rtol, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize('mode,values,opt,per_pass', [
    ('cap', (0.0, 0.3, 1.0), 'sgd', None),
    ('cap', (0.0, 0.3, 1.0), 'adam', None),
    ('cap', (0.0, 0.3, 1.0), 'adam', 2),  # lax.map over chunks of 2 vmapped models
    ('constant', (0.0, 0.5), 'sgd', None),
    ('anneal_steps', (2.0, 7.0), 'sgd', None),
])
def test_vmapped_sweep_step_equals_single_steps(tmp_path, embedded_split, mode, values, opt,
                                                per_pass):
  c = small_config(tmp_path, mode, values)
  c.train.anneal_cap = 1.0  # lets the anneal lengths differ in beta after a few steps
  model = models.build(c, embedded_split.n_items)
  optimizer = optax.sgd(0.5) if opt == 'sgd' else optax.adam(1e-2)
  mesh = distributed.make_mesh()  # 4 fake devices: the sweep stays data-parallel
  batches = [input_pipeline.global_batch(embedded_split.train[i * 9:(i + 1) * 9], mesh, 3)
             for i in range(4)]  # 9 users over 4 devices: padding users too
  init = steps.init_state(model, optimizer, jax.random.key(0))
  states = sweep.stack_states(init, len(values))
  step_m = sweep.make_sweep_step(model, optimizer, mesh, seed=3, models_per_pass=per_pass)
  scheds = sweep.hparams(c, embedded_split.n_items)
  for b in batches:
    states, metrics_m = step_m(states, b, scheds)
  single = steps.make_train_step(model, optimizer, mesh, seed=3)
  for m, v in enumerate(values):
    state = steps.init_state(model, optimizer, jax.random.key(0))
    sched = steps.schedule_from_config(sweep.model_config(c, v))
    for b in batches:
      state, metrics = single(state, b, sched)
    _leaves_close(_unstack(states['params'], m), state['params'], rtol=1e-5, atol=1e-6)
    assert float(metrics_m['beta'][m]) == pytest.approx(float(metrics['beta']))
    assert float(metrics_m['loss'][m]) == pytest.approx(float(metrics['loss']), rel=1e-5)
  betas = np.asarray(metrics_m['beta'])
  assert len(set(betas.round(6))) == len(values), betas  # the settings really differ


@pytest.mark.parametrize('grid', [
    'learning_rate=1e-2,2e-3',
    'dropout_rate=0.1,0.7',
    'weight_decay=0,1e-3',  # 0: the penalty's cond skips it; a product is tested below
])
def test_a_sweep_of_traced_knobs_equals_the_single_runs(tmp_path, embedded_split, grid):
  c = small_config(tmp_path)
  c.sweep.grid = grid
  n_items = embedded_split.n_items
  model, opt = models.build(c, n_items), steps.make_optimizer(c)
  mesh = distributed.make_mesh()
  batches = [input_pipeline.global_batch(embedded_split.train[i * 9:(i + 1) * 9], mesh, 3)
             for i in range(3)]
  points = sweep.grid_points(c)
  assert len(points) == len(grid.split(','))
  states = sweep.stack_states(steps.init_state(model, opt, jax.random.key(0)), len(points))
  step_m = sweep.make_sweep_step(model, opt, mesh, seed=3)
  hparams_m = sweep.hparams(c, n_items, points)
  for b in batches:
    states, _ = step_m(states, b, hparams_m)
  for m, point in enumerate(points):
    cm = sweep.model_config(c, point)
    model_m = models.build(cm, n_items)
    # The plain single run: optax.adam at the point's rate, the model's hyperparameters
    # as Python constants (a bare schedule, so nothing of the model is traced).
    plain = optax.adam(cm.train.learning_rate)
    state = steps.init_state(model_m, plain, jax.random.key(0))
    single = steps.make_train_step(model_m, plain, mesh, seed=3)
    for b in batches:
      state, _ = single(state, b, steps.schedule_from_config(cm))
    _leaves_close(_unstack(states['params'], m), state['params'], rtol=1e-5, atol=1e-6)
  finals = [np.asarray(jax.tree.leaves(_unstack(states['params'], m))[0]) for m in
            range(len(points))]
  for i in range(len(points)):  # every point trains another model
    for j in range(i):
      assert not np.allclose(finals[i], finals[j])


def test_a_knob_that_is_not_traced_is_refused_before_the_workdir_is_written(tmp_path,
                                                                             embedded_split):
  c = small_config(tmp_path)
  c.sweep.grid = 'latent_dim=8,16'
  with pytest.raises(ValueError, match='not a traced hyperparameter.*separate sweeps'):
    sweep.train_sweep(c, tmp_path / 'sweep', split=embedded_split)
  assert not (tmp_path / 'sweep').exists()
  c.sweep.grid = 'no_such_knob=1,2'
  with pytest.raises(ValueError, match='no_such_knob.*not a traced'):
    sweep.train_sweep(c, tmp_path / 'sweep', split=embedded_split)


def test_a_grid_sweep_writes_its_points_and_table(tmp_path, embedded_split):
  from vaecf.tools import sweep as sweep_command
  c = small_config(tmp_path)
  c.train.epochs = 1
  c.sweep.grid = 'learning_rate=1e-2,1e-3;dropout_rate=0.5'
  res = sweep.train_sweep(c, tmp_path / 'grid', split=embedded_split)
  assert res['mode'] == 'grid' and res['knob'] == 'learning_rate'
  assert [m['point'] for m in res['models']] == [
      {'learning_rate': 1e-2, 'dropout_rate': 0.5}, {'learning_rate': 1e-3, 'dropout_rate': 0.5}]
  rows = read_metrics(tmp_path / 'grid')
  assert [r['sweep_point'] for r in rows] == [m['point'] for m in res['models']]
  table = sweep_command.markdown(res).splitlines()
  assert table[0].startswith('| learning_rate | dropout_rate | best epoch')
  assert table[2].startswith('| 0.01 | 0.5 | 1 |') and len(table) == 4


def test_sweep_run_resumes_and_matches_single_runs(tmp_path, embedded_split):
  c = small_config(tmp_path, values=(0.0, 1.0))
  c.train.eval_batch_size = 25  # several evaluation batches
  wd = tmp_path / 'sweep'
  sweep.train_sweep(c, wd, split=embedded_split, stop_after_epoch=1)
  res = sweep.train_sweep(c, wd, split=embedded_split)  # resumes at epoch 2
  assert json.loads((wd / 'sweep.json').read_text()) == res
  rows = read_metrics(wd)
  assert [(r['epoch'], r['model']) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1)]
  for m, v in enumerate(c.sweep.caps):
    single = train.train_and_evaluate(sweep.model_config(c, v), tmp_path / f'single{m}',
                                      split=embedded_split)
    got = res['models'][m]
    assert got['best_epoch'] == single['best_epoch']
    assert got['val_ndcg@100'] == pytest.approx(single['val_ndcg@100'], rel=1e-5)
    assert got['test'] == pytest.approx(single['test'], rel=1e-5, abs=1e-7)
    curve = [r['val_ndcg@100'] for r in read_metrics(tmp_path / f'single{m}')]
    assert [r['val_ndcg@100'] for r in rows if r['model'] == m] == pytest.approx(curve, rel=1e-5)
  best = sweep.restore_best_params(wd, c, embedded_split.n_items, distributed.make_mesh())
  assert jax.tree.leaves(best)[0].shape[0] == 2


def test_selection_picks_the_argmax_of_the_validation_curve(tmp_path, embedded_split):
  from vaecf.tools import select_beta
  rows = [{'epoch': 1, 'beta': 0.1, 'val_ndcg@100': 0.2},
          {'epoch': 2, 'beta': 0.2},  # no validation pass this epoch
          {'epoch': 3, 'beta': 0.3, 'val_ndcg@100': 0.35},
          {'epoch': 4, 'beta': 0.4, 'val_ndcg@100': 0.31}]
  assert select_beta.best_row(rows) == rows[2]
  c = small_config(tmp_path)
  c.train.epochs = 3
  out = select_beta.run(c, tmp_path / 'sel', split=embedded_split)
  curve = read_metrics(tmp_path / 'sel' / 'anneal')
  per_epoch = math.ceil(embedded_split.train.shape[0] / c.train.batch_size)
  assert curve[-1]['beta'] == pytest.approx((3 * per_epoch - 1) / (3 * per_epoch))
  i = int(np.argmax([r['val_ndcg@100'] for r in curve]))
  assert out['selected_beta'] == curve[i]['beta'] and out['selected_epoch'] == i + 1
  retrain = json.loads((tmp_path / 'sel' / 'retrain' / 'config.json').read_text())
  assert retrain['train']['anneal_cap'] == pytest.approx(curve[i]['beta'])
  assert out['test'] == json.loads((tmp_path / 'sel' / 'retrain' / 'results.json')
                                   .read_text())['test']


def test_plot_command_writes_pngs(tmp_path, embedded_split):
  pytest.importorskip('matplotlib')
  from vaecf.tools import plots
  c = small_config(tmp_path)
  c.train.epochs = 1
  train.train_and_evaluate(c, tmp_path / 'run', split=embedded_split)
  written = plots.plot_workdir(tmp_path / 'run')
  assert written and all(p.suffix == '.png' and p.stat().st_size > 0 for p in written)


def test_models_per_pass_unset_loops_on_a_cpu_and_vmaps_on_accelerators():
  assert sweep.resolve_models_per_pass(None, 'cpu') == 1
  assert sweep.resolve_models_per_pass(None, 'gpu') is None
  assert sweep.resolve_models_per_pass(None, 'tpu') is None
  assert sweep.resolve_models_per_pass(None) == 1  # the tests run on CPU devices
  assert sweep.resolve_models_per_pass(0, 'cpu') is None  # 0: all in one vmap, anywhere
  assert sweep.resolve_models_per_pass(3, 'gpu') == 3
  with pytest.raises(ValueError, match='models_per_pass=-1'):
    sweep.resolve_models_per_pass(-1)
