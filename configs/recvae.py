"""RecVAE (Shenbin et al., WSDM 2020; vaecf/models/recvae.py) on a dataset preset.

  vaecf-train --config=configs/recvae.py:ml-1m --config.data.path=PATH/ml-1m --workdir=DIR \
      [--config.model.gamma=0.0035]

The authors' settings, declared where the model registers: 5 x 600 encoder, latent 200,
gamma 0.005, 3 encoder passes and 1 decoder pass an epoch, Adam 5e-4, batch 500.
"""
from vaecf.presets import compose


def get_config(dataset: str = ''):
  return compose('recvae', dataset)
