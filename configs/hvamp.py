"""H+Vamp (Gated) (Kim & Suh, RecSys 2019; vaecf/models/hvamp.py) on a dataset preset.

  vaecf-train --config=configs/hvamp.py:ml-1m --config.data.path=PATH/ml-1m --workdir=DIR

The authors' settings, declared where the model registers. Its beta warm-up is set in
steps for ML-1M (train.total_anneal_steps): set it for other data.
"""
from vaecf.presets import compose


def get_config(dataset: str = ''):
  return compose('hvamp', dataset)
