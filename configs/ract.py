"""RaCT (Lobel et al., ICLR 2020; vaecf/models/ract.py) on a dataset preset.

  vaecf-train --config=configs/ract.py:ml-1m --config.data.path=PATH/ml-1m --workdir=DIR

The authors' settings, declared where the model registers: a Mult-VAE actor (Adam 1e-3,
batch 500), a 100-100-10 critic (Adam 1e-4), the actor fine-tuned on the critic with its
own Adam at 2e-6; 100 MLE, 50 critic and 50 joint epochs (their ML-20M run). On ML-1M the
critic and joint stages get 100 epochs each at learning rates scaled to the steps they
lack (critic 1.2e-3, actor 2.3e-5), registered with the model.
"""
from vaecf.presets import compose


def get_config(dataset: str = ''):
  return compose('ract', dataset)
