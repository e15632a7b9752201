"""A model of experiments/ trains through the unchanged trainer, named only by its config
(configs/swish_vae.py), with its own declared keys; the core never imports experiments."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from vaecf import models, train
from vaecf.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


def swish_config(dataset=''):
  spec = importlib.util.spec_from_file_location('_swish_config', REPO / 'configs' / 'swish_vae.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(dataset)


def test_experiment_model_trains_through_the_main_loop(tmp_path):
  c = swish_config()
  assert c.model.name == 'swish_vae' and c.model.module == 'experiments.swish_vae'
  assert c.model.layer_norm_eps == 1e-5  # declared where the model registers
  c.data.cache_dir = str(tmp_path / 'cache')
  c.model.hidden_dims = (32,)
  c.model.latent_dim = 8
  c.model.layer_norm_eps = 1e-3  # its own key, overridable like any other
  c.train.epochs = 2
  c.train.batch_size = 128
  res = train.train_and_evaluate(c, tmp_path / 'wd')
  assert 'swish_vae' in models.available()
  assert res['model'] == 'swish_vae' and np.isfinite(res['test']['ndcg@100'])
  saved = json.loads((tmp_path / 'wd' / 'config.json').read_text())
  assert saved['model']['module'] == 'experiments.swish_vae'
  assert saved['model']['layer_norm_eps'] == 1e-3


def test_the_model_key_changes_the_model():
  """layer_norm_eps reaches the encoder: a large eps changes the scores."""
  import jax
  from vaecf import sparse
  import scipy.sparse as sp
  c = swish_config()
  c.model.hidden_dims, c.model.latent_dim = (8,), 4
  x = sp.random(3, 20, density=0.3, format='csr', random_state=0, dtype=np.float32)
  x.data[:] = 1
  scores = []
  for eps in (1e-5, 10.0):
    c.model.layer_norm_eps = eps
    m = models.build(c, 20)
    params = m.init(jax.random.key(0))
    scores.append(np.asarray(m.score(params, sparse.shard_rows(x))))
  assert not np.allclose(scores[0], scores[1])


def test_a_config_without_the_models_keys_is_refused():
  from vaecf.config import base_config
  swish_config()  # registers the model
  c = base_config()
  c.model.name = 'swish_vae'
  with pytest.raises(ConfigError, match='model.layer_norm_eps'):
    models.build(c, 20)


def test_core_never_imports_experiments():
  core = Path(models.__file__).resolve().parents[1]
  offenders = [str(p) for p in core.rglob('*.py')
               if 'import experiments' in p.read_text() or 'from experiments' in p.read_text()]
  assert not offenders, offenders
