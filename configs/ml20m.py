"""Mult-VAE^PR on MovieLens 20M exactly as the paper (docs/protocol.md).

  python -m vaecf.main --config=configs/ml20m.py --config.data.path=PATH/ml-20m --workdir=DIR

Ratings > 3.5, users >= 5 items, 10,000 validation + 10,000 test users;
paper test numbers: Recall@20 0.395, Recall@50 0.537, NDCG@100 0.426.
"""
from vaecf.config import base_config


def get_config():
  c = base_config()
  c.data.name = 'ml-20m'
  c.data.rating_threshold = 3.5
  c.data.min_user_count = 5
  c.data.n_heldout_users = 10_000
  return c
