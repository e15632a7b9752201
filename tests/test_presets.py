"""Configs composed from a model and a dataset (vaecf/presets.py, configs/<model>.py):
each model's declared keys on every preset, overridable from the command line, and old
workdirs of the models that moved into vaecf.models still resume."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vaecf import models, presets, train
from vaecf.config import ConfigError, base_config, validate

REPO = Path(__file__).resolve().parents[1]
BUILT_IN = ('multvae', 'multdae', 'recvae', 'hvamp', 'ract', 'vasp')


def config_file(name: str, dataset: str = ''):
  spec = importlib.util.spec_from_file_location(f'_cfg_{name}', REPO / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(dataset) if dataset else module.get_config()


@pytest.mark.parametrize('model', BUILT_IN)
@pytest.mark.parametrize('dataset', sorted(presets.DATASETS))
def test_every_model_on_every_preset(model, dataset):
  c = config_file(model, dataset)
  validate(c)
  assert c.model.name == model and c.data.name == dataset
  for key, value in presets.DATASETS[dataset]['data'].items():
    assert c.data[key] == value, key
  declared = models.settings(model)
  own = declared.datasets.get(dataset, {})
  for key, value in {**declared.model, **own.get('model', {})}.items():
    assert c.model[key] == value, key
  # The dataset's scale over the model's default, and the model's own for the dataset
  # over both.
  for key, value in {**declared.train, **presets.DATASETS[dataset].get('train', {}),
                     **own.get('train', {})}.items():
    assert c.train[key] == value, key


def test_a_model_rescales_its_own_settings_for_a_dataset():
  on_1m, on_20m = config_file('ract', 'ml-1m'), config_file('ract', 'ml-20m')
  assert (on_1m.model.critic_epochs, on_1m.train.epochs) == (100, 300)
  assert (on_20m.model.critic_epochs, on_20m.train.epochs) == (50, 200)  # the declaration
  assert on_1m.model.mle_epochs == on_20m.model.mle_epochs == 100
  with pytest.raises(ValueError, match="only 'model' and 'train'"):
    models.register('bad', datasets={'ml-1m': {'data': {}}})


def test_no_dataset_is_the_embedded_one():
  assert config_file('multvae').data.name == presets.DEFAULT_DATASET == 'ml-latest-small'


def test_unknown_dataset_or_model_is_named():
  with pytest.raises(ConfigError, match="'ml-2m'.*ml-1m"):
    presets.compose('multvae', 'ml-2m')
  with pytest.raises(ConfigError, match="unknown model 'recvea'"):
    presets.compose('recvea', 'ml-1m')


def test_a_model_never_falls_back_to_hidden_defaults():
  c = base_config()
  c.model.name = 'recvae'  # the old route: another model's config with the name changed
  with pytest.raises(ConfigError, match='model.gamma.*configs/recvae.py'):
    models.build(c, 10)


def test_default_config_is_multvae_on_the_embedded_preset_with_its_tuned_knobs():
  c, base = config_file('default'), config_file('multvae', 'ml-latest-small')
  assert c.data == base.data and c.model.name == 'multvae'
  assert (c.model.dropout_rate, c.train.anneal_cap, c.train.epochs, c.train.patience) == \
      (0.7, 0.2, 100, 20)
  assert (c.train.batch_size, c.train.total_anneal_steps) == (100, 500)


def clicks_csv(path: Path, n_users=150, n_items=80, seed=0) -> Path:
  """A small `user,item` file of clicks for the csv preset."""
  rng = np.random.default_rng(seed)
  rows = ['user,item']
  for u in range(n_users):
    for i in rng.choice(n_items, size=rng.integers(6, 20), replace=False):
      rows.append(f'u{u},i{i}')
  path.write_text('\n'.join(rows) + '\n')
  return path


def _train_cli(tmp_path, config, *extra):
  f = clicks_csv(tmp_path / 'clicks.csv')
  wd = tmp_path / 'wd'
  proc = subprocess.run(
      [sys.executable, '-m', 'vaecf.main', f'--config={config}', f'--config.data.path={f}',
       f'--workdir={wd}', '--config.train.epochs=1', f'--config.data.cache_dir={tmp_path}',
       *extra], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((wd / 'config.json').read_text()), json.loads((wd / 'results.json').read_text())


def test_recvae_on_a_csv_keeps_its_settings_and_takes_its_own_flags(tmp_path):
  saved, res = _train_cli(tmp_path, 'configs/recvae.py:csv', '--config.model.gamma=0.01')
  assert res['model'] == 'recvae'
  m, t = saved['model'], saved['train']
  assert (m['gamma'], m['encoder_passes'], m['decoder_passes'], t['learning_rate']) == \
      (0.01, 3, 1, 5e-4)
  assert m['hidden_dims'] == [600] * 5 and saved['data']['format'] == 'delimited'


@pytest.mark.slow
@pytest.mark.parametrize('model', ['multdae', 'hvamp'])
def test_the_other_models_run_on_a_csv_the_same_way(tmp_path, model):
  saved, res = _train_cli(tmp_path, f'configs/{model}.py:csv')
  assert res['model'] == model and saved['model']['name'] == model
  for key, value in models.settings(model).model.items():
    assert saved['model'][key] == (list(value) if isinstance(value, tuple) else value)


def test_a_workdir_of_the_old_experiments_recvae_resumes(tmp_path):
  """Runs made when RecVAE lived in experiments/ name that module in config.json, and
  have no eval section."""
  c = presets.compose('recvae')
  c.data.cache_dir = str(tmp_path / 'cache')
  c.model.hidden_dims, c.model.latent_dim = (16,) * 5, 8
  c.train.epochs, c.train.batch_size = 2, 500
  wd = tmp_path / 'wd'
  train.train_and_evaluate(c, wd, stop_after_epoch=1)
  saved = json.loads((wd / 'config.json').read_text())
  saved['model']['module'] = 'experiments.recvae'
  del saved['eval']  # written before metrics were a setting: the defaults, as today's
  (wd / 'config.json').write_text(json.dumps(saved))
  res = train.train_and_evaluate(c, wd)  # resumed, not refused as another config
  assert res['best_epoch'] in (1, 2)
  rows = [json.loads(l) for l in (wd / 'metrics.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in rows] == [1, 2]
  # And a config that still names the old module imports the installed model.
  c.model.module = 'experiments.recvae'
  train.import_model_module(c)
  assert 'experiments.recvae' not in sys.modules
