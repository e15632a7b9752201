"""Trains a model, picks its best epoch on the validation users, and scores the test users.

  vaecf-train --config=configs/<model>.py:<dataset> --workdir=DIR [--config.KEY=VALUE ...]
  (= python -m vaecf.main ...)

<model> is multvae, multdae, recvae, hvamp or a config of your own; <dataset> one of
ml-latest-small (the default, embedded), ml-100k, ml-1m, ml-20m, netflix, msd, csv (a file
of your own: --config.data.path=F). configs/default.py is Mult-VAE tuned on the embedded
data. A mistyped --config.xyz is an error.

Writes in DIR: config.json, data.json and item_ids.npy (what the run was), metrics.jsonl
(a row per epoch), checkpoints/ (the latest epoch and the best), results.json (the test
metrics of the best epoch). Rerunning the command resumes from the latest checkpoint.
"""
import logging

from absl import app, flags
from ml_collections import config_flags

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
config_flags.DEFINE_config_file('config', None, 'A config file from configs/.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from vaecf import console
  console.setup()
  from vaecf import distributed, train  # after flag parsing: jax may be configured first
  distributed.maybe_initialize(FLAGS.config)
  logging.getLogger('vaecf.main').info('devices: %s', distributed.describe())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def run():
  """Console script entry point (vaecf-train)."""
  from vaecf import console
  console.cli(main, __name__)


if __name__ == '__main__':
  run()
