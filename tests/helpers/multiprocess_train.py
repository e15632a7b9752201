"""Runs a short training in one process of a multi-process job (or alone).

  python tests/helpers/multiprocess_train.py WORKDIR CACHE_DIR [ADDRESS NUM_PROCESSES PROCESS_ID]

The device count comes from XLA_FLAGS set by the caller.
"""
import sys

from vaecf import distributed, train
from vaecf.config import base_config


def main(workdir, cache_dir, address=None, n=None, pid=None):
  c = base_config()
  c.data.rating_threshold = 3.5
  c.data.cache_dir = cache_dir
  c.model.hidden_dims = (32,)
  c.model.latent_dim = 8
  c.train.batch_size = 101  # odd: padding users on both devices
  c.train.epochs = 2
  if address:
    c.distributed.initialize = True
    c.distributed.coordinator_address = address
    c.distributed.num_processes = int(n)
    c.distributed.process_id = int(pid)
  distributed.maybe_initialize(c)
  print(distributed.describe(), flush=True)
  res = train.train_and_evaluate(c, workdir)
  print('RESULT', res['test']['ndcg@100'], flush=True)


if __name__ == '__main__':
  main(*sys.argv[1:])
