"""Mult-VAE^PR on any `user,item[,value]` file: no rating threshold, users with >= 5 items.

  python -m vaecf.main --config=configs/csv.py --config.data.path=clicks.csv --workdir=DIR

Every row counts as a click (values, if any, are read and not thresholded; set
`--config.data.value_col=rating --config.data.rating_threshold=3.5` to keep only
values above 3.5). Columns are named
by the header (`--config.data.user_col=... --config.data.item_col=...`, or 0-based
numbers for a file without one) and the separator by `--config.data.delimiter`.
10% of the users are held out for validation and 10% for test
(`--config.data.heldout_fraction=0.1`); `--config.data.heldout_fraction=0
--config.data.n_heldout_users=N` holds out N users per group instead.
"""
from vaecf.config import base_config


def get_config():
  c = base_config()
  c.data.name = 'csv'
  c.data.format = 'delimited'
  c.data.user_col = 'user'
  c.data.item_col = 'item'
  c.data.value_col = ''
  c.data.min_user_count = 5
  c.data.heldout_fraction = 0.1
  return c
