"""Plots a workdir's metrics: `python -m vaecf.plot --workdir=DIR [--out=DIR2]`.

Reads DIR/metrics.jsonl (a single run or a sweep) and DIR/sweep.json when present;
writes PNGs (validation NDCG@100 against epoch and beta, a sweep's summary). Works
on a run still in progress.
"""
from absl import app, flags

flags.DEFINE_string('workdir', None, 'A run or sweep directory holding metrics.jsonl.')
flags.DEFINE_string('out', None, 'Where to write the PNGs (default: the workdir).')
flags.mark_flag_as_required('workdir')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from vaecf import plots
  try:
    for path in plots.plot_workdir(FLAGS.workdir, FLAGS.out):
      print(path)
  except plots.MissingMatplotlib as e:
    raise app.UsageError(str(e)) from e


if __name__ == '__main__':
  app.run(main)
