"""Mult-DAE, the paper's denoising sibling, on a dataset preset (vaecf/presets.py).

  vaecf-train --config=configs/multdae.py:ml-1m --config.data.path=PATH/ml-1m --workdir=DIR

No hidden layer ([I] -> 200 -> [I]), input dropout 0.5, L2 0.01 / batch on the weights.
"""
from vaecf.presets import compose


def get_config(dataset: str = ''):
  return compose('multdae', dataset)
