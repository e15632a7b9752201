"""The worked extension (experiments/swish_vae.py), a model added without touching vaecf/.

  vaecf-train --config=configs/swish_vae.py:ml-latest-small --workdir=DIR   # from the checkout
"""
from vaecf.presets import compose


def get_config(dataset: str = ''):
  return compose('swish_vae', dataset, module='experiments.swish_vae')
