"""The one training loop (vaecf/loop.py): the epoch it owns, early stopping and the sweep
settings' checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from vaecf import device_data, distributed, input_pipeline, loop, train
from vaecf.models import Phase
from vaecf.config import ConfigError, parse_grid, validate
from vaecf.workdir import read_metrics
from test_sweep import embedded_split, small_config  # noqa: F401  (the fixture)


def test_stale_means_every_model_best_is_patience_epochs_old():
  best = lambda *epochs: [{'epoch': e} for e in epochs]
  assert not loop._stale(best(3), 10, 0)  # 0: never stop
  assert loop._stopped({'epoch': 3}, 5, 2) and not loop._stopped({'epoch': 5}, 6, 2)
  assert loop._stale(best(3), 5, 2) and not loop._stale(best(3), 4, 2)
  assert not loop._stale(best(3, 5), 6, 2)  # one model of a sweep still improving
  assert not loop._stale(best(0), 9, 2)  # no validation pass yet


class _Recorder:
  """A trainee of M fake models whose steps record the users of each batch (row u holds
  item u), so the epoch the loop runs can be read back."""

  def __init__(self, n_models):
    self.labels = [{'model': i} for i in range(n_models)]
    self.phases = (Phase('a', passes=2), Phase('b', after=lambda p, s: s))
    self.mesh = distributed.make_mesh(jax.devices()[:1])
    self.calls = []
    self.after_fns = {'b': lambda state: self.calls.append(('after', 'b')) or state}

  def take(self, carry, active):
    self.calls.append(('take', tuple(active)))
    return carry

  def put(self, carry, state, active):
    self.calls.append(('put', tuple(active)))
    return state

  def steps(self, active):
    n = sum(active)
    def step(name):
      def fn(state, batch):
        users = np.asarray(batch.cols)[np.asarray(batch.vals) > 0]
        self.calls.append((name, tuple(users)))
        loss = jnp.full((n,), float(len(self.calls)))
        return state + 1, {'loss': loss, 'beta': loss / 100, 'users': loss}
      return fn
    return {'a': step('a'), 'b': step('b')}


def test_the_loop_runs_each_phase_pass_on_its_own_shuffle_then_the_phase_hook():
  n, b, seed, epoch = 10, 4, 7, 3
  train_x = sp.identity(n, np.float32, format='csr')
  trainee = _Recorder(3)
  active = [True, False, True]
  state, rows = loop.train_epoch(trainee, 0, active, train_x, epoch, batch_size=b, seed=seed,
                                 epochs=5)
  assert state == 3 * 3  # 3 passes of ceil(10 / 4) steps
  calls = trainee.calls
  assert calls[0] == ('take', (True, False, True)) and calls[-1] == ('put', (True, False, True))
  steps_of = lambda name, k: [u for c in calls[1 + 3 * k:4 + 3 * k] if c[0] == name
                              for u in c[1]]
  for k, name in enumerate('aab'):  # pass k of the epoch: shuffled on (seed, epoch, k)
    assert steps_of(name, k) == list(input_pipeline.epoch_order(n, seed, epoch, k))
  assert calls[-2] == ('after', 'b')
  assert rows[1] is None and rows[0] == rows[2]
  # The first phase's means as loss; each phase's as <phase>_loss; beta: the last step's.
  assert rows[0]['loss'] == rows[0]['a_loss'] == np.mean([2, 3, 4, 5, 6, 7])
  assert rows[0]['b_loss'] == np.mean([8, 9, 10]) and rows[0]['beta'] == pytest.approx(0.07)


def test_the_host_pipeline_runs_a_given_order_and_padding():
  # How a device-fed epoch is replayed on the host (vaecf.device_data): its order, per pass.
  n, b, seed, epoch = 10, 4, 7, 3
  train_x = sp.identity(n, np.float32, format='csr')
  trainee = _Recorder(1)
  orders = lambda e, k: np.roll(np.arange(n), e + k)
  loop.train_epoch(trainee, 0, [True], train_x, epoch, batch_size=b, seed=seed, epochs=5,
                   orders=orders, nnz=64)
  users = [c[1] for c in trainee.calls if c[0] in 'ab']
  assert [u for us in users[:3] for u in us] == list(orders(epoch, 0))
  assert [u for us in users[6:] for u in us] == list(orders(epoch, 2))


def test_blocks_of_steps_are_one_step_axis():
  blocks = [device_data.Scanned({'loss': jnp.asarray(v, jnp.float32),
                                 'beta': jnp.asarray(v, jnp.float32) / 4,
                                 'users': jnp.ones(len(v), jnp.float32)})
            for v in ([1.0, 3.0], [5.0])]
  assert loop.epoch_metrics((Phase(),), {'train': blocks}) == [{'loss': 3.0, 'beta': 1.25}]


def test_one_models_scalar_metrics_are_one_row():
  history = [{'loss': jnp.float32(v), 'beta': jnp.float32(v / 4), 'users': jnp.float32(4)}
             for v in (1.0, 3.0)]
  assert loop.epoch_metrics((Phase(),), {'train': history}) == [{'loss': 2.0, 'beta': 0.75}]


def test_plan_reads_the_loop_settings_and_names_the_selection_key(tmp_path):
  c = small_config(tmp_path)
  c.train.patience, c.eval.select = 3, 'recall@50'
  plan = loop.Plan.from_config(c)
  assert (plan.epochs, plan.batch_size, plan.seed, plan.patience) == (
      c.train.epochs, c.train.batch_size, c.train.seed, 3)
  assert plan.key == 'val_recall@50' and loop.Plan(1, 1, 0).key == 'val_ndcg@100'


def _first_stale_epoch(curve, patience):
  best = 0
  for epoch, v in enumerate(curve, 1):
    if best and epoch - 1 - best >= patience:
      return epoch - 1, best
    if not best or v > curve[best - 1]:
      best = epoch
  return None, best


def test_early_stopping_ends_where_the_full_curve_says_and_picks_the_same_epoch(
    tmp_path, embedded_split):
  c = small_config(tmp_path)
  c.train.epochs = 6
  c.train.learning_rate = 3e-2  # a curve that turns down within a few epochs
  full = train.train_and_evaluate(c, tmp_path / 'full', split=embedded_split)
  curve = [r['val_ndcg@100'] for r in read_metrics(tmp_path / 'full')]
  stop, best = _first_stale_epoch(curve, 2)
  c.train.patience = 2
  got = train.train_and_evaluate(c, tmp_path / 'stopped', split=embedded_split)
  rows = read_metrics(tmp_path / 'stopped')
  assert got.get('stopped_early_at') == stop
  assert len(rows) == (stop or c.train.epochs)
  assert [r['val_ndcg@100'] for r in rows] == pytest.approx(curve[:len(rows)], rel=1e-6)
  assert got['best_epoch'] == best
  if max(curve[:len(rows)]) == max(curve):
    assert got['test'] == pytest.approx(full['test'], rel=1e-6)
  # A rerun of the stopped run resumes, trains nothing more and reports the same.
  again = train.train_and_evaluate(c, tmp_path / 'stopped', split=embedded_split)
  drop = lambda r: {k: v for k, v in r.items() if k != 'test_eval_seconds'}
  assert drop(again) == drop(got) and len(read_metrics(tmp_path / 'stopped')) == len(rows)


def test_each_model_of_a_sweep_stops_where_its_single_run_does(tmp_path, embedded_split):
  from vaecf import sweep
  c = small_config(tmp_path)
  c.train.epochs, c.train.patience = 7, 1
  # On the embedded data the first dips after epoch 3; the second improves up to epoch 6.
  c.sweep.grid = 'learning_rate=3e-2,1e-2'
  singles = []
  for m, point in enumerate(sweep.grid_points(c)):
    res = train.train_and_evaluate(sweep.model_config(c, point), tmp_path / f'single{m}',
                                   split=embedded_split)
    singles.append((res, read_metrics(tmp_path / f'single{m}')))
  stops = [res.get('stopped_early_at') for res, _ in singles]
  assert stops[0] is not None and stops[1] is None, stops  # the case this test is about
  wd = tmp_path / 'sweep'
  sweep.train_sweep(c, wd, split=embedded_split, stop_after_epoch=stops[0] + 1)
  got = sweep.train_sweep(c, wd, split=embedded_split)  # resumed after model 0 stopped
  rows = read_metrics(wd)
  for m, (res, curve) in enumerate(singles):
    mine = [r for r in rows if r['model'] == m]
    assert [r['epoch'] for r in mine] == [r['epoch'] for r in curve]
    for key in ('val_ndcg@100', 'train_loss'):
      assert [r[key] for r in mine] == pytest.approx([r[key] for r in curve], rel=1e-5)
    model = got['models'][m]
    assert model['best_epoch'] == res['best_epoch']
    assert model['test'] == pytest.approx(res['test'], rel=1e-5, abs=1e-7)
    assert model.get('stopped_after_epoch') == stops[m]
  assert 'stopped_early_at' not in got  # model 1 trained every epoch
  assert all(r['users_per_s'] > 0 for r in rows)


@pytest.mark.parametrize('key,value,match', [
    ('train.patience', -1, 'train.patience'),
    ('train.patience', 1, 'train.patience'),  # under eval_every=2: never a validation pass
    ('sweep.grid', 'learning_rate', 'knob=value'),
    ('sweep.grid', 'learning_rate=1e-3;learning_rate=1e-4', 'given twice'),
    ('sweep.grid', 'dropout_rate=0.1,high', 'numbers'),
])
def test_bad_loop_and_sweep_settings_are_named(tmp_path, key, value, match):
  c = small_config(tmp_path)
  c.train.eval_every = 2
  section, name = key.split('.')
  c[section][name] = value
  with pytest.raises(ConfigError, match=match):
    validate(c)


def test_parse_grid_keeps_the_order_of_knobs_and_values():
  assert parse_grid(' b=3,1 ; a=2 ') == {'b': (3.0, 1.0), 'a': (2.0,)}
  assert parse_grid('') == {}


def test_a_run_written_before_a_setting_existed_resumes_when_it_is_at_its_default(tmp_path):
  import json
  from vaecf.workdir import Workdir
  c = small_config(tmp_path)
  saved = json.loads(c.to_json_best_effort())
  del saved['train']['patience'], saved['sweep']['grid']  # as an older vaecf wrote it
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  wd = Workdir(tmp_path)
  assert wd.config_diff(c) == []
  c.train.patience = 5
  assert wd.config_diff(c) == ['train.patience: None -> 5']
