"""Mult-VAE^PR, the paper's model and settings, on a dataset preset (vaecf/presets.py).

  vaecf-train --config=configs/multvae.py:ml-1m --config.data.path=PATH/ml-1m --workdir=DIR

[600] encoder, latent 200, input dropout 0.5, Adam 1e-3, batch 500, 200 epochs, beta
annealed to 0.2 over 200,000 steps, the epoch chosen on validation NDCG@100.
"""
from vaecf.presets import compose


def get_config(dataset: str = ''):
  return compose('multvae', dataset)
