"""Dataset presets and the configs composed from a model and a dataset.

  vaecf-train --config=configs/<model>.py:<dataset> --workdir=DIR

ml_collections hands the text after ':' to the config file's `get_config`, which calls
`compose(model, dataset)`: base_config(), then the model's own keys and defaults (declared
once, where the model registers: vaecf.models.registry), then the dataset's preset below,
then the model's own settings for that dataset, if it registers any (RaCT's stages on ML-1M).
Each preset is the paper's preprocessing and held-out counts (docs/protocol.md), written
only here.
"""
from __future__ import annotations

import ml_collections

from vaecf.config import ConfigError, base_config

DEFAULT_DATASET = 'ml-latest-small'

# data.* keys, and the train.* keys that follow from a dataset's size.
DATASETS = {
    # 603 users: 60 validation and 60 test users (10% each, as ML-1M holds out 600 of
    # 6,040). A batch of 100 gives its ~480 training users 5 steps an epoch rather than
    # one, and the anneal ends at step 500, inside a run, as the paper's does on ML-20M.
    'ml-latest-small': {'data': {'rating_threshold': 3.5, 'n_heldout_users': 60},
                        'train': {'batch_size': 100, 'total_anneal_steps': 500}},
    'ml-100k': {'data': {'rating_threshold': 3.5, 'n_heldout_users': 100}},
    # Byte for byte the authors' split (tests/test_split.py).
    'ml-1m': {'data': {'rating_threshold': 3.5, 'min_user_count': 5, 'n_heldout_users': 600}},
    'ml-20m': {'data': {'rating_threshold': 3.5, 'min_user_count': 5,
                        'n_heldout_users': 10_000}},
    'netflix': {'data': {'format': 'netflix', 'rating_threshold': 3.5, 'min_user_count': 5,
                         'n_heldout_users': 40_000}},
    'msd': {'data': {'format': 'msd', 'rating_threshold': None, 'min_item_count': 200,
                     'min_user_count': 20, 'n_heldout_users': 50_000}},
    # Any `user,item[,value]` file (--config.data.path): every row a click unless
    # data.value_col and data.rating_threshold say otherwise; users with >= 5 items; 10%
    # of the users held out for validation and 10% for test.
    'csv': {'data': {'format': 'delimited', 'user_col': 'user', 'item_col': 'item',
                     'value_col': '', 'min_user_count': 5, 'heldout_fraction': 0.1}},
}


def compose(model: str, dataset: str = DEFAULT_DATASET, *,
            module: str = '') -> ml_collections.ConfigDict:
  """The config of `model` (registered by vaecf.models, or by `module`) on `dataset`."""
  from vaecf import models  # the registry imports JAX: only when a config is composed
  dataset = dataset or DEFAULT_DATASET
  if dataset not in DATASETS:
    raise ConfigError(f'unknown dataset preset {dataset!r}: one of {sorted(DATASETS)} '
                      '(--config=configs/<model>.py:<dataset>; "csv" for a file of your own)')
  models.import_module(module)
  declared = models.settings(model)
  c = base_config()
  c.model.name, c.model.module = model, module
  for key, value in declared.model.items():
    c.model[key] = value
  _update(c.train, declared.train)
  preset = DATASETS[dataset]
  c.data.name = dataset
  _update(c.data, preset['data'])
  _update(c.train, preset.get('train', {}))
  own = declared.datasets.get(dataset, {})
  _update(c.model, own.get('model', {}))
  _update(c.train, own.get('train', {}))
  return c


def _update(section, values: dict) -> None:
  for key, value in values.items():
    if key not in section:
      raise ConfigError(f'preset key {key!r} is not a config key')
    with section.ignore_type():  # placeholders (None) take their first value here
      section[key] = value
