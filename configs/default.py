"""Mult-VAE^PR on the embedded MovieLens latest-small (no download, a few minutes on 2 CPUs).

  python -m vaecf.main --config=configs/default.py --workdir=/tmp/vaecf-default

Data: ratings > 3.5, users with >= 5 items: about 600 users. 60 validation and 60
test users (10% each, as configs/ml1m.py holds out 600 of 6,040) keep ~80% of the
users for training while each held-out group still gives a standard error of a
few points of NDCG. Paper hyperparameters otherwise, over 100 epochs (a batch of
500 users means one or two steps per epoch here).
"""
from vaecf.config import base_config


def get_config():
  c = base_config()
  c.data.name = 'ml-latest-small'
  c.data.rating_threshold = 3.5
  c.data.n_heldout_users = 60
  c.train.epochs = 100
  return c
