"""Mult-VAE^PR on MovieLens 100K (a quick real-data check; used by the tests).

  python -m vaecf.main --config=configs/ml100k.py --config.data.path=PATH/ml-100k --workdir=DIR
"""
from vaecf.config import base_config


def get_config():
  c = base_config()
  c.data.name = 'ml-100k'
  c.data.rating_threshold = 3.5
  c.data.n_heldout_users = 100
  return c
