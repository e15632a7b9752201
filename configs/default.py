"""Mult-VAE^PR on the embedded MovieLens latest-small (offline, about 2 minutes on 2 CPUs).

  python -m vaecf.main --config=configs/default.py --workdir=/tmp/vaecf-default

Expected (2-core CPU): best epoch ~70, test NDCG@100 ~0.29 +- 0.03 (60 test users).

Data: ratings > 3.5, users with >= 5 items: 603 users (483 for training), 5,660 items. 60 validation
and 60 test users (10% each, as configs/ml1m.py holds out 600 of 6,040) keep ~80%
of the users for training while each held-out group still gives a standard error
of a few points of NDCG. Paper hyperparameters except the batch: 100 users instead
of 500, so the ~480 training users make 5 steps an epoch rather than one.
"""
from vaecf.config import base_config


def get_config():
  c = base_config()
  c.data.name = 'ml-latest-small'
  c.data.rating_threshold = 3.5
  c.data.n_heldout_users = 60
  c.train.batch_size = 100
  c.train.epochs = 100
  return c
