"""Trains and evaluates a model: `python -m vaecf.main --config=configs/X.py --workdir=DIR`
(or `vaecf-train`).

Kept short on purpose: the logic lives in importable, tested functions
(`vaecf.train.train_and_evaluate`). The config file is locked, so a mistyped
`--config.xyz=...` override is an error.
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
  from vaecf import console, process
  console.setup()
  process.prepare()  # before JAX starts a backend: XLA reads its flags once
  from vaecf import distributed, train  # after flag parsing: jax may be configured first
  distributed.maybe_initialize(FLAGS.config)
  logging.getLogger('vaecf.main').info('devices: %s', distributed.describe())
  console.guard(train.train_and_evaluate, FLAGS.config, FLAGS.workdir)


def run():
  """Console script entry point (vaecf-train)."""
  app.run(main)


if __name__ == '__main__':
  run()
