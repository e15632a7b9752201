"""The beta sweep's first spelling, kept working: `python -m experiments.sweep_beta` is
`python -m experiments.sweep` (same flags, same outputs), whose default with no
config.sweep.grid is the sweep of config.sweep.mode over config.sweep.caps."""
from absl import app

from experiments.sweep import benchmark, define_flags, main, markdown  # noqa: F401
from vaecf import console

if __name__ == '__main__':
  from vaecf import process
  process.prepare()  # before anything starts JAX's backend
  define_flags()
  app.run(console.guarded(main))
