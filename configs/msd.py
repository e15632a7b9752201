"""Mult-VAE^PR on the Million Song Dataset Taste Profile as the paper (docs/protocol.md).

  python -m vaecf.main --config=configs/msd.py --config.data.path=PATH/train_triplets.txt --workdir=DIR

No rating threshold; songs listened to by >= 200 users, then users with >= 20
songs; 50,000 validation + 50,000 test users; paper test numbers: Recall@20
0.266, Recall@50 0.364, NDCG@100 0.316.
"""
from vaecf.config import base_config


def get_config():
  c = base_config()
  c.data.name = 'msd'
  c.data.format = 'msd'
  c.data.rating_threshold = None
  c.data.min_item_count = 200
  c.data.min_user_count = 20
  c.data.n_heldout_users = 50_000
  return c
