"""An experiment's model trains through the unchanged trainer, named only in the config."""
import json

import numpy as np

from vaecf import models, train
from vaecf.config import base_config


def test_experiment_model_trains_through_the_main_loop(tmp_path):
  c = base_config()
  c.data.rating_threshold = 3.5
  c.data.cache_dir = str(tmp_path / 'cache')
  c.model.module = 'experiments.swish_vae'
  c.model.name = 'swish_vae'
  c.model.hidden_dims = (32,)
  c.model.latent_dim = 8
  c.train.epochs = 2
  c.train.batch_size = 128
  res = train.train_and_evaluate(c, tmp_path / 'wd')
  assert 'swish_vae' in models.available()
  assert res['model'] == 'swish_vae' and np.isfinite(res['test']['ndcg@100'])
  saved = json.loads((tmp_path / 'wd' / 'config.json').read_text())
  assert saved['model']['module'] == 'experiments.swish_vae'


def test_core_never_imports_experiments():
  import pathlib
  core = pathlib.Path(models.__file__).resolve().parents[1]
  offenders = [str(p) for p in core.rglob('*.py')
               if 'import experiments' in p.read_text() or 'from experiments' in p.read_text()]
  assert not offenders, offenders
