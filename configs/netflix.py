"""Mult-VAE^PR on the Netflix Prize data as the paper (docs/protocol.md).

  python -m vaecf.main --config=configs/netflix.py --config.data.path=PATH/training_set --workdir=DIR

Ratings > 3.5, users >= 5 items, 40,000 validation + 40,000 test users;
paper test numbers: Recall@20 0.351, Recall@50 0.444, NDCG@100 0.386.
"""
from vaecf.config import base_config


def get_config():
  c = base_config()
  c.data.name = 'netflix'
  c.data.format = 'netflix'
  c.data.rating_threshold = 3.5
  c.data.min_user_count = 5
  c.data.n_heldout_users = 40_000
  return c
