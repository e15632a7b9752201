"""Grids over settings that change shapes: one vmapped sweep per shape (vaecf/sweep_groups.py)."""
import json

import pytest

from vaecf import sweep, sweep_groups, train
from vaecf.config import ConfigError
from vaecf.workdir import read_metrics
from test_sweep import embedded_split, small_config  # noqa: F401  (the fixture)


def test_points_group_by_shape_in_order_and_a_shape_only_group_is_one_model(tmp_path):
  c = small_config(tmp_path)
  c.model.hidden_dims = (32, 32)
  pts = [{'latent_dim': 8.0, 'learning_rate': 1e-2}, {'latent_dim': 4.0, 'learning_rate': 1e-2},
         {'latent_dim': 8.0, 'learning_rate': 1e-3}]
  assert sweep_groups.shape_knobs(c, pts) == ['latent_dim']
  got = sweep_groups.groups(c, pts)
  assert [(s, q, i) for s, q, i in got] == [
      ({'latent_dim': 8.0}, [{'learning_rate': 1e-2}, {'learning_rate': 1e-3}], [0, 2]),
      ({'latent_dim': 4.0}, [{'learning_rate': 1e-2}], [1])]
  only = sweep_groups.groups(c, [{'hidden_dims': 16.0}, {'hidden_dims': 64.0}])
  assert [q for _, q, _ in only] == [[{'anneal_cap': c.train.anneal_cap}]] * 2
  assert sweep_groups.shape_config(c, {'hidden_dims': 16.0}).model.hidden_dims == (16, 16)
  assert sweep_groups.shape_config(c, {'latent_dim': 4.0}).model.latent_dim == 4
  assert sweep_groups.group_name({'latent_dim': 4, 'hidden_dims': 16}) == (
      'latent_dim=4,hidden_dims=16')
  assert sweep_groups.group_name({'x': 1234567.0}) != sweep_groups.group_name({'x': 1234568.0})
  # The value a setting takes names its group: 8 and 8.0 are one shape, in one folder.
  same = sweep_groups.groups(c, [{'latent_dim': 8}, {'latent_dim': 8.0}])
  assert [(s, i) for s, _, i in same] == [({'latent_dim': 8}, [0, 1])]
  c.sweep.mode, c.train.constant_beta = 'constant', None  # a shape-only group needs neither
  assert [q for _, q, _ in sweep_groups.groups(c, [{'latent_dim': 4.0}])] == [
      [{'anneal_cap': c.train.anneal_cap}]]


# The same checks as any config value: non-finite, fractional or < 1 shapes, named by point.
@pytest.mark.parametrize('grid,match', [
    ('latent_dim=nan', r'point 1 \(latent_dim=nan\): latent_dim=nan: not a finite number'),
    ('latent_dim=8,inf', r'point 2 \(latent_dim=inf\): latent_dim=inf: not a finite'),
    ('latent_dim=-inf', 'not a finite number'),
    ('hidden_dims=nan', 'hidden_dims=nan: not a finite number'),
    ('latent_dim=8,2.5;learning_rate=1e-3', r'point 2 .*latent_dim.*=2.5: .*whole number'),
    ('latent_dim=8,-2', r'point 2 .*whole number >= 1'),
    ('latent_dim=4.5,8', 'whole number'),
    ('latent_dim=0,8', 'whole number'),
    ('likelihood=1,2', 'not a number'),
])
def test_a_bad_shape_is_named_before_any_workdir_is_written(tmp_path, embedded_split, grid,
                                                           match):
  c = small_config(tmp_path)
  c.sweep.grid = grid
  with pytest.raises(ConfigError, match=match):
    sweep_groups.train_groups(c, tmp_path / 'groups', split=embedded_split)
  assert not (tmp_path / 'groups').exists()


@pytest.mark.parametrize('dims', [None, ()])
def test_a_hidden_width_sweep_needs_the_depth_stated(tmp_path, embedded_split, dims):
  c = small_config(tmp_path)
  c.model.hidden_dims = dims  # (): no hidden layer, so every width would be the same model
  c.sweep.grid = 'hidden_dims=16,32'
  with pytest.raises(ConfigError, match='set config.model.hidden_dims'):
    sweep_groups.train_groups(c, tmp_path / 'groups', split=embedded_split)
  assert not (tmp_path / 'groups').exists()


@pytest.mark.slow
def test_each_model_of_a_grouped_sweep_equals_its_single_run(tmp_path, embedded_split):
  from vaecf.tools import sweep as sweep_command
  c = small_config(tmp_path)
  c.sweep.grid = 'latent_dim=8,4;learning_rate=1e-2,2e-3'
  res = sweep_groups.train_groups(c, tmp_path / 'groups', split=embedded_split)
  assert json.loads((tmp_path / 'groups' / 'groups.json').read_text()) == res
  from vaecf.tools import plots
  with pytest.raises(ValueError, match=r"grouped by shape.*'latent_dim=4', 'latent_dim=8'"):
    plots.plot_workdir(tmp_path / 'groups')
  assert [m['point'] for m in res['models']] == sweep.grid_points(c)
  assert [g['workdir'].rsplit('/', 1)[1] for g in res['groups']] == ['latent_dim=8',
                                                                       'latent_dim=4']
  for g in res['groups']:  # each group is an ordinary sweep of its traced knob
    rows = read_metrics(g['workdir'])
    assert sorted({r['sweep_value'] for r in rows}) == [2e-3, 1e-2]
  for m in (1, 2):  # one model of each group
    point = res['models'][m]['point']
    shape = {'latent_dim': point['latent_dim']}
    single_c = sweep.model_config(sweep_groups.shape_config(c, shape),
                                  {'learning_rate': point['learning_rate']})
    single = train.train_and_evaluate(single_c, tmp_path / f'single{m}', split=embedded_split)
    got = res['models'][m]
    assert got['best_epoch'] == single['best_epoch']
    assert got['val_ndcg@100'] == pytest.approx(single['val_ndcg@100'], rel=1e-5)
    assert got['test'] == pytest.approx(single['test'], rel=1e-5, abs=1e-7)
  table = sweep_command.markdown(res).splitlines()
  assert table[0].startswith('| latent_dim | learning_rate | best epoch') and len(table) == 6
  assert table[4].startswith('| 4 | 0.01 |')  # the grid's order: latent_dim first
  again = sweep_groups.train_groups(c, tmp_path / 'groups', split=embedded_split)
  drop = lambda r: {**r, 'test_eval_seconds': 0, 'groups': [
      {**g, 'test_eval_seconds': 0} for g in r['groups']]}
  assert drop(again) == drop(res)  # a rerun resumes every group: nothing trains again
