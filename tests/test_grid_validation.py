"""A sweep's grid is checked whole before anything is read or written: its form, its knobs,
every point's values (by the config's own rules) and repeated points; the command names
the problem on one `error:` line (vaecf.config.parse_grid, vaecf.sweep.check_points,
vaecf.sweep_groups.check_grid)."""
import subprocess
import sys
from pathlib import Path

import pytest

from vaecf import sweep, sweep_groups
from vaecf.config import ConfigError, parse_grid
from test_sweep import embedded_split, small_config  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[1]


def _sweep_command(tmp_path, grid, *extra):
  """vaecf-sweep on the default config, its split cached under tmp_path/cache (so a run
  that reads the data leaves that folder behind)."""
  return subprocess.run(
      [sys.executable, '-m', 'vaecf.tools.sweep', '--config=configs/default.py',
       f'--workdir={tmp_path / "wd"}', f'--config.data.cache_dir={tmp_path / "cache"}',
       f'--config.sweep.grid={grid}', '--config.train.epochs=1', *extra],
      cwd=REPO, capture_output=True, text=True, timeout=600)


def _refused(proc, tmp_path, *named):
  assert proc.returncode != 0, proc.stdout[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert 'error: ' in proc.stderr and 'error: unexpected' not in proc.stderr, proc.stderr
  for text in named:
    assert text in proc.stderr, proc.stderr
  assert not (tmp_path / 'wd').exists()
  assert not (tmp_path / 'cache').exists()  # the data was not even read


# -- 1. every point's values -------------------------------------------------------------

@pytest.mark.parametrize('grid,named', [
    ('dropout_rate=1.5,0.5;learning_rate=-1e-3,1e-3',
     ['point 1 (dropout_rate=1.5, learning_rate=-0.001): model.dropout_rate=1.5',
      'point 1 (dropout_rate=1.5, learning_rate=-0.001): train.learning_rate=-0.001',
      'point 2 (dropout_rate=1.5, learning_rate=0.001): model.dropout_rate=1.5',
      'point 3 (dropout_rate=0.5, learning_rate=-0.001): train.learning_rate=-0.001']),
    ('learning_rate=nan', ['point 1 (learning_rate=nan): learning_rate=nan: not a finite']),
    ('anneal_cap=0.2,-1', ['point 2 (anneal_cap=-1.0): train.anneal_cap=-1.0']),
    ('weight_decay=inf', ['weight_decay=inf: not a finite number']),
])
def test_bad_grid_values_are_refused_as_config_values_before_the_workdir(
    tmp_path, embedded_split, grid, named):
  c = small_config(tmp_path)
  c.train.epochs = 1
  c.sweep.grid = grid
  with pytest.raises(ConfigError) as e:
    sweep.train_sweep(c, tmp_path / 'sweep', split=embedded_split)
  for text in named:
    assert text in str(e.value)
  assert 'point 4' not in str(e.value)  # a good point is not named
  assert not (tmp_path / 'sweep').exists()


def test_the_command_refuses_bad_values_before_reading_the_data(tmp_path):
  proc = _sweep_command(tmp_path, 'dropout_rate=1.5,0.5;learning_rate=-1e-3,1e-3')
  _refused(proc, tmp_path, 'model.dropout_rate=1.5', 'train.learning_rate=-0.001')
  proc = _sweep_command(tmp_path, 'latent_dim=nan;learning_rate=1e-3')
  _refused(proc, tmp_path, 'latent_dim=nan: not a finite number')


# -- 2. malformed grid strings ------------------------------------------------------------

MALFORMED = [
    ('learning_rate', "'learning_rate' is not knob=value"),
    ('learning_rate=', "'learning_rate=': an empty value"),
    ('learning_rate=1e-3,', "'learning_rate=1e-3,': an empty value"),
    ('learning_rate=1e-3,,3e-4', 'an empty value'),
    ('=1,2', "'=1,2' names no knob"),
    ('learning_rate=1e-3,fast', "'fast' is not a number"),
    ('dropout_rate=0.5;learning_rate=1e-3;dropout_rate=0.3', "knob 'dropout_rate' is given twice"),
    ('learning rate=1e-3', "'learning rate' is not a knob name"),
]


@pytest.mark.parametrize('grid,named', MALFORMED)
def test_a_malformed_grid_is_a_config_error_naming_its_part(grid, named):
  with pytest.raises(ConfigError) as e:
    parse_grid(grid)
  assert named in str(e.value)


@pytest.mark.parametrize('grid,named', MALFORMED + [
    ('lr=1e-3,3e-4', "sweep knob 'lr' is not a traced hyperparameter"),
    ('no_such_knob=1;learning_rate=1e-3', "'no_such_knob'"),
    ('likelihood=1,2', "config.model.likelihood='multinomial' is not a number"),
])
def test_the_command_names_a_malformed_grid_on_one_line(tmp_path, grid, named):
  _refused(_sweep_command(tmp_path, grid), tmp_path, named)


def test_a_refused_command_leaves_an_existing_workdir_as_it_was(tmp_path):
  wd = tmp_path / 'wd'
  (wd / 'sub').mkdir(parents=True)
  (wd / 'notes.txt').write_bytes(b'kept\n')
  (wd / 'sub' / 'x.bin').write_bytes(bytes(range(256)))
  before = {p.relative_to(wd): p.read_bytes() if p.is_file() else None for p in wd.rglob('*')}
  proc = _sweep_command(tmp_path, 'lr=1e-3')
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr
  assert 'error: unexpected' not in proc.stderr, proc.stderr
  assert {p.relative_to(wd): p.read_bytes() if p.is_file() else None
          for p in wd.rglob('*')} == before
  assert not (tmp_path / 'cache').exists()


# -- 3. repeated points ------------------------------------------------------------------

@pytest.mark.parametrize('grid,named', [
    ('latent_dim=8,8.0;learning_rate=1e-3,1e-3',
     'points 1, 2, 3, 4 are one model (latent_dim=8, learning_rate=0.001)'),
    ('latent_dim=4,8;dropout_rate=0.5,0.3,0.5',
     'points 1, 3 are one model (latent_dim=4, dropout_rate=0.5)'),
])
def test_repeated_points_are_refused_naming_the_values(tmp_path, embedded_split, grid, named):
  c = small_config(tmp_path)
  c.train.epochs = 1
  c.sweep.grid = grid
  with pytest.raises(ConfigError) as e:
    sweep_groups.train_groups(c, tmp_path / 'groups', split=embedded_split)
  assert named in str(e.value)
  assert not (tmp_path / 'groups').exists()


def test_repeated_traced_points_and_caps_are_refused(tmp_path, embedded_split):
  c = small_config(tmp_path, values=(0.0, 0.3, 0.3))
  c.train.epochs = 1
  with pytest.raises(ConfigError, match=r'points 2, 3 are one model \(anneal_cap=0.3\)'):
    sweep.train_sweep(c, tmp_path / 'caps', split=embedded_split)
  # total_anneal_steps counts steps: 4.2 and 4 are the same schedule.
  with pytest.raises(ConfigError, match=r'points 1, 2 .*total_anneal_steps=4\)'):
    sweep.train_sweep(c, tmp_path / 'steps', split=embedded_split,
                      points=[{'total_anneal_steps': 4.0}, {'total_anneal_steps': 4.2}])
  assert not (tmp_path / 'caps').exists() and not (tmp_path / 'steps').exists()


def test_the_command_refuses_repeated_points(tmp_path):
  _refused(_sweep_command(tmp_path, 'latent_dim=8,8.0;learning_rate=1e-3,1e-3'), tmp_path,
           'points 1, 2, 3, 4 are one model (latent_dim=8, learning_rate=0.001)')


# -- a valid grid passes, as it did ------------------------------------------------------

def test_a_valid_grid_passes_the_checks_unchanged(tmp_path):
  c = small_config(tmp_path)
  c.sweep.grid = 'latent_dim=8,4.0;learning_rate=1e-2,2e-3'
  points, plan = sweep_groups.check_grid(c)
  assert points == sweep.grid_points(c)
  assert [(s, q, i) for s, q, i, _ in plan] == [
      ({'latent_dim': 8}, [{'learning_rate': 1e-2}, {'learning_rate': 2e-3}], [0, 1]),
      ({'latent_dim': 4}, [{'learning_rate': 1e-2}, {'learning_rate': 2e-3}], [2, 3])]
  assert [g.model.latent_dim for *_, g in plan] == [8, 4]
  cm = sweep.model_config(c, {'latent_dim': 4.0, 'learning_rate': 2e-3})
  assert cm.model.latent_dim == 4 and type(cm.model.latent_dim) is int
  assert cm.train.learning_rate == 2e-3
  c.sweep.grid = ''
  sweep.check_points(c, sweep.grid_points(c))  # a beta sweep over distinct caps


def test_an_unset_number_is_a_knob_after_its_references_are_resolved():
  # Mult-DAE's weight_decay is None (its model default: 0.01 / batch size) and a tune's
  # config is a resolved copy, which types None as NoneType: the documented Mult-DAE
  # tune (`vaecf-tune --config=configs/multvae.py:ml-1m --models=multdae`) needs it.
  from vaecf import presets
  c = presets.compose('multdae').copy_and_resolve_references()
  assert c.model.weight_decay is None
  points = [{'weight_decay': 2e-5}, {'weight_decay': 8e-5}]
  sweep.check_points(c, points)
  assert sweep.setting(c, 'weight_decay', 2e-5) == 2e-5
  assert isinstance(sweep.setting(c, 'weight_decay', 1.0), float)
  assert sweep.model_config(c, points[1]).model.weight_decay == 8e-5
