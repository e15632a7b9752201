"""Trains and evaluates a model: `python -m vaecf.main --config=configs/X.py --workdir=DIR`.

Kept short on purpose: the logic lives in importable, tested functions
(`vaecf.train.train_and_evaluate`). The config file is locked, so a mistyped
`--config.xyz=...` override is an error.
"""
import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
config_flags.DEFINE_config_file('config', None, 'A config file from configs/.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


class _QuietLibraries:
  """Keeps orbax's per-save INFO lines out of the console; its warnings still show."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or 'orbax' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_logger().addFilter(_QuietLibraries())
  from vaecf import distributed, train  # after flag parsing: jax may be configured first
  distributed.maybe_initialize(FLAGS.config)
  logging.info('devices: %s', distributed.describe())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
