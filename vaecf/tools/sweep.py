"""A parallel sweep: M models, one per point of a grid of traced knobs, trained at once.

  vaecf-sweep --config=configs/multvae.py:ml-1m --config.data.path=PATH/ml-1m \
      --config.sweep.caps=0.0,0.1,0.2,0.3,0.5,1.0 --workdir=DIR [--benchmark_epochs=3]
  vaecf-sweep --config=configs/multvae.py:ml-1m --config.data.path=... \
      --config.sweep.grid='learning_rate=1e-3,3e-4;dropout_rate=0.3,0.5' --workdir=DIR

(= python -m vaecf.tools.sweep.) With no grid it is a beta sweep: --config.sweep.mode picks what the values of config.sweep.caps are: 'cap'
(anneal_cap, with train.total_anneal_steps), 'constant' (a fixed beta) or 'anneal_steps'
(total_anneal_steps, with train.anneal_cap). A grid names any traced knobs: anneal_cap,
constant_beta, total_anneal_steps, learning_rate and the model's own hparams
(multvae/multdae: dropout_rate, weight_decay; recvae: gamma); the models are their
product. Writes DIR/sweep.json, DIR/sweep.md,
DIR/metrics.jsonl (a row per epoch and model) and the plots; resumes after a kill.
A grid may also name settings that change shapes (latent_dim, hidden_dims as the width
of every hidden layer, a model's own such as n_pseudo_inputs): the points are grouped by
shape and each group is its own sweep in DIR/<knob>=<value>/ (vaecf.sweep_groups), with
the merged DIR/groups.json and DIR/sweep.md over all of them.
--models_per_pass=k vmaps k models at a time and loops over the chunks (same
results; on XLA:CPU the vmapped sparse layer's batched scatters are slow, so k=1
is fastest there). --benchmark_epochs=N first times N epochs (training and
validation) of the sweep against the same models trained one after another, into
DIR/benchmark.json; --notrain stops after it.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

from vaecf import (checkpoints, console, distributed, evaluate as evaluation, input_pipeline,
                   models, steps, sweep, sweep_groups, train)
from vaecf.tools import plots
from vaecf.data import load_split

log = logging.getLogger(__name__)

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined only when it runs (importing this module beside
  another experiment defines none)."""
  flags.DEFINE_string('workdir', None, 'Directory for the sweep.')
  flags.DEFINE_integer('benchmark_epochs', 0, 'Epochs to time vectorised vs sequential (0: no).')
  flags.DEFINE_integer('benchmark_repeats', 2, 'Timed repeats; the fastest of each is kept.')
  flags.DEFINE_bool('train', True, 'Run the sweep itself.')
  flags.DEFINE_integer('models_per_pass', None, 'Models vmapped together; more are looped '
                       'over with lax.map. 0: all in one vmap. Unset: 1 on a CPU (fastest '
                       'there), all on an accelerator.')
  flags.DEFINE_list('benchmark_models_per_pass', ['0', '1'], 'The ways timed by the benchmark.')
  config_flags.DEFINE_config_file('config', None, 'A config file from configs/.',
                                  lock_config=True)
  flags.mark_flags_as_required(['config', 'workdir'])


def _epochs(split, config, mesh, epochs):
  for epoch in range(1, epochs + 1):
    yield input_pipeline.prefetch(input_pipeline.epoch_batches(
        split.train, config.train.batch_size, config.train.seed, epoch, mesh))


def benchmark(config, split, epochs: int, repeats: int = 2,
              models_per_pass: tuple[int | None, ...] = (None,)) -> dict:
  """Seconds for `epochs` epochs (train + validation) of M models: together vs one by one.

  'sequential' is M single runs, one after another, in this process; each entry of
  `models_per_pass` is a sweep (None: all models in one vmap). Every shape is
  compiled by an untimed pass first; each way then runs `repeats` times,
  interleaved, and its fastest time is kept.
  """
  mesh = distributed.make_mesh()
  model = models.build(config, split.n_items)
  opt = steps.make_optimizer(config)
  points = sweep.grid_points(config)
  n_models = len(points)
  init = jax.jit(lambda k: steps.init_state(model, opt, k), out_shardings=distributed.replicated(mesh))
  key = jax.random.fold_in(jax.random.key(config.train.seed), 0)
  val = split.heldout('val')
  stack = jax.jit(lambda s: sweep.stack_states(s, n_models),
                  out_shardings=distributed.replicated(mesh))
  hparams_M = sweep.hparams(config, split.n_items, points)

  def vectorised(per_pass):
    sweep_step = sweep.make_sweep_step(model, opt, mesh, config.train.seed,
                                       models_per_pass=per_pass)
    for_sweep, eval_batch = sweep.make_sweep_scorer(model, mesh, config.train.eval_batch_size,
                                                    per_pass)
    def run():
      states = stack(init(key))
      for batches in _epochs(split, config, mesh, epochs):
        for b in batches:
          states, m = sweep_step(states, b, hparams_M)
        jax.block_until_ready(m)
        evaluation.evaluate_models(for_sweep(states['params']), *val, n_models,
                                   batch_size=eval_batch)
    return run

  single_step = steps.make_train_step(model, opt, mesh, config.train.seed)
  for_single, eval_batch = steps.make_scorer(model, mesh, config.train.eval_batch_size)

  def sequential():
    for point in points:
      c = sweep.model_config(config, point)
      hp = steps.hparams_from_config(c, models.build(c, split.n_items))
      state = init(key)
      for batches in _epochs(split, config, mesh, epochs):
        for b in batches:
          state, m = single_step(state, b, hp)
        jax.block_until_ready(m)
        train.evaluate_params(for_single, eval_batch, state['params'], split, 'val',
                              config.eval.metrics)

  ways = {'sequential': sequential}
  for k in models_per_pass:
    ways['vmap_all' if k is None else f'models_per_pass_{k}'] = vectorised(k)
  for fn in ways.values():
    fn()  # compile every batch shape
  times = {name: [] for name in ways}
  for _ in range(repeats):
    for name, fn in ways.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
      log.info('benchmark %s: %.1fs', name, times[name][-1])
  best = {k: min(v) for k, v in times.items()}
  return {'models': n_models, 'epochs': epochs,
          'steps_per_epoch': -(-split.train.shape[0] // config.train.batch_size),
          'seconds': best, 'speedup': {k: best['sequential'] / v for k, v in best.items()
                                       if k != 'sequential'},
          'all_seconds': times, 'devices': mesh.devices.size,
          'platform': jax.devices()[0].platform, 'device_kind': jax.devices()[0].device_kind}


def markdown(results: dict) -> str:
  knobs = list(results['points'][0])
  labels = ([plots.SWEEP_LABELS.get(results['mode'], knobs[0])] if len(knobs) == 1 else knobs)
  select = checkpoints.recorded_select(results)
  lines = ['| ' + ' | '.join(labels) + f' | best epoch | val {select} | test NDCG@100 | '
           'test Recall@20 | test Recall@50 |', '|---' * (len(labels) + 5) + '|']
  for m in results['models']:
    t = m['test']
    cells = ' | '.join(f'{m["point"][k]:g}' for k in knobs)
    lines.append(f'| {cells} | {m["best_epoch"]} | {m["val_" + select]:.4f} | '
                 f'{t["ndcg@100"]:.4f} ({t["ndcg@100_se"]:.4f}) | {t["recall@20"]:.4f} | '
                 f'{t["recall@50"]:.4f} |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  console.setup()
  config, workdir = FLAGS.config, Path(FLAGS.workdir)
  # Before any data is read or file written: a bad grid is named, not half-run.
  points, _ = sweep_groups.check_grid(config)
  per_pass = sweep.resolve_models_per_pass(FLAGS.models_per_pass)
  shapes = sweep_groups.shape_knobs(config, points)
  if shapes and FLAGS.benchmark_epochs:
    raise app.UsageError(f'--benchmark_epochs times one shape: drop {shapes} from the grid')
  split, _ = load_split(config.data)
  if FLAGS.benchmark_epochs:
    ways = tuple(int(k) or None for k in FLAGS.benchmark_models_per_pass)
    bench = benchmark(config, split, FLAGS.benchmark_epochs, FLAGS.benchmark_repeats, ways)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'benchmark.json').write_text(json.dumps(bench, indent=2))
    print(json.dumps(bench, indent=2))
  if not FLAGS.train:
    return
  if shapes:
    results = sweep_groups.train_groups(config, workdir, split=split, models_per_pass=per_pass)
    plotted = [Path(g['workdir']) for g in results['groups']]
  else:
    results = sweep.train_sweep(config, workdir, split=split, models_per_pass=per_pass)
    plotted = [workdir]
  table = markdown(results)
  (workdir / 'sweep.md').write_text(table + '\n')
  print(table)
  try:
    for path in (p for wd in plotted for p in plots.plot_workdir(wd)):
      print(path)
  except plots.MissingMatplotlib as e:
    log.warning('%s', e)


def cli():
  """Console script entry point (vaecf-sweep); the flags exist only when the command runs."""
  define_flags()
  console.cli(main, __name__)


if __name__ == '__main__':
  cli()
