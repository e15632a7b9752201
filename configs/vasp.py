"""VASP (Vančura & Kordík, ICANN 2021; vaecf/models/vasp.py) on a dataset preset.

  vaecf-train --config=configs/vasp.py:ml-1m --config.data.path=PATH/ml-1m --workdir=DIR

The authors' training settings, declared where the model registers: focal loss (alpha
0.25, gamma 2) plus KL, Nadam 5e-5 then 1e-5 in stages, 1024 users a step, 90 epochs;
widths 1024 / latent 512 for a CPU (theirs: 4096 / 2048). The learning-rate stages are
counted in steps for ML-1M (model.stage_steps): set them for other data or batch sizes.
"""
from vaecf.presets import compose


def get_config(dataset: str = ''):
  return compose('vasp', dataset)
