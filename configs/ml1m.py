"""Mult-VAE^PR on MovieLens 1M with the paper's hyperparameters.

  python -m vaecf.main --config=configs/ml1m.py --config.data.path=PATH/ml-1m --workdir=DIR
  python -m vaecf.main --config=configs/ml1m.py --config.model.name=multdae --workdir=DIR

Ratings > 3.5, users with >= 5 items, 600 validation and 600 test users, 200 epochs,
batch 500, Adam 1e-3, beta annealed to 0.2 over 200,000 steps. Results: README.md.
Without data.path the GroupLens zip is fetched into the cache (online only).
"""
from vaecf.config import base_config


def get_config():
  c = base_config()
  c.data.name = 'ml-1m'
  c.data.rating_threshold = 3.5
  c.data.min_user_count = 5
  c.data.n_heldout_users = 600
  return c
