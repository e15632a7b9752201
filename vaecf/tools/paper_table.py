"""The paper's comparison table under strong generalisation, every model on one dataset.

  vaecf-paper-table --config=configs/multvae.py:ml-1m --config.data.path=PATH/ml-1m \
      --workdir=DIR [--models=...] [--likelihoods=...]   (= python -m vaecf.tools.paper_table)

Stages, each in its own folder and skipped when finished (rerun the command to resume):
  DIR/multvae-<lik>, DIR/multdae-<lik>   vaecf.train (epoch chosen on validation NDCG@100)
  DIR/recvae, DIR/hvamp, DIR/ract, ...   RecVAE, H+Vamp (Gated), RaCT and VASP with the settings
                                         they declare (configs/<model>.py) on this
                                         table's data and split
  DIR/<baseline>                         grid on validation users (grid.jsonl, one line
                                         per point), the best saved in the
                                         vaecf.baselines format, result.json when done
Writes DIR/table.md and DIR/table.json, gathering every finished stage: Recall@20, Recall@50,
NDCG@100 (mean ± standard error over test users), the chosen hyperparameters, wall
times, the likelihood comparison and the paper's ordering checked on this data.
Test users are only ever scored with the chosen model.

It is over 300 lines because each kind of stage (trained, experiment, baseline), the table
and its checks of the paper's ordering belong to this one command.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from vaecf import baselines, checkpoints, console, evaluate, presets, train
from vaecf.common import atomic_write
from vaecf.data import load_split
from vaecf.workdir import read_metrics

log = logging.getLogger(__name__)

TRAINED = ('multvae', 'multdae')
# Models trained with the model and train settings they declare (vaecf.presets.compose);
# the table's config gives the data, the split and the metrics.
EXPERIMENTS = ('recvae', 'hvamp', 'ract', 'vasp')
MODELS = ('multvae', 'multdae', *EXPERIMENTS, 'cdae', 'slim', 'wmf', 'ease', 'edlae',
          'popularity')
LIKELIHOODS = ('multinomial', 'gaussian', 'logistic')
LABELS = {'multvae': 'Mult-VAE^PR', 'multdae': 'Mult-DAE', 'recvae': 'RecVAE',
          'hvamp': 'H+Vamp (Gated)', 'ract': 'RaCT', 'vasp': 'VASP', 'cdae': 'CDAE', 'slim': 'SLIM',
          'wmf': 'WMF', 'ease': 'EASE', 'edlae': 'EDLAE', 'popularity': 'Popularity'}
PAPER_ORDER = ('multvae', 'cdae', 'multdae', 'slim', 'wmf')  # ML-20M NDCG@100, best first
METRICS = ('recall@20', 'recall@50', 'ndcg@100')
CONFIG_KEYS = ('model.likelihood', 'model.hidden_dims', 'model.latent_dim',
               'model.dropout_rate', 'model.weight_decay', 'train.epochs', 'train.batch_size',
               'train.learning_rate', 'train.anneal_cap', 'train.total_anneal_steps')


def _table_eval(config):
  """The config's eval section with the table's columns (METRICS) always scored."""
  e = config.eval.copy_and_resolve_references()
  e.metrics = tuple(dict.fromkeys((*METRICS, *e.metrics)))
  return e


def _val(r: dict) -> float:
  """A stage's validation score of the metric that chose it (older stages: NDCG@100)."""
  return r[checkpoints.best_key(checkpoints.recorded_select(r))]


def _key(hp: dict) -> str:
  return json.dumps(hp, sort_keys=True)


def _lookup(d: dict, dotted: str):
  for part in dotted.split('.'):
    d = d.get(part) if isinstance(d, dict) else None
  return d


def trained_stage(config, workdir: Path, model: str, likelihood: str, split) -> dict:
  """Mult-VAE/DAE with one likelihood through the project's trainer (resumes itself)."""
  sub = workdir / f'{model}-{likelihood}'
  if not (sub / 'results.json').exists():
    c = config.copy_and_resolve_references()
    c.model.name, c.model.likelihood = model, likelihood
    c.eval = _table_eval(config)
    log.info('stage %s: training', sub.name)
    train.train_and_evaluate(c, sub, split=split)
  return trained_row(sub)


def experiment_config(config, name: str):
  """The model's own config (configs/<name>.py:<dataset>) with this table's data section."""
  dataset = config.data.name if config.data.name in presets.DATASETS else ''
  c = presets.compose(name, dataset)
  c.data = config.data.copy_and_resolve_references()
  c.eval = _table_eval(config)
  return c


def experiment_stage(config, workdir: Path, name: str, split, adjust=None) -> dict:
  """A model with settings of its own through the project's trainer (resumes itself);
  `adjust(config) -> config` changes its settings (tests shrink it)."""
  sub = workdir / name
  if not (sub / 'results.json').exists():
    log.info('stage %s: training', name)
    c = experiment_config(config, name)
    train.train_and_evaluate(adjust(c) if adjust else c, sub, split=split)
  return trained_row(sub)


def trained_row(sub: Path) -> dict:
  res = json.loads((sub / 'results.json').read_text())
  cfg = json.loads((sub / 'config.json').read_text())
  # Every kept epoch once (a resumed run replays none) plus the test pass.
  wall = sum(r['seconds'] for r in read_metrics(sub)) + res['test_eval_seconds']
  hp = {k.split('.')[1]: _lookup(cfg, k) for k in CONFIG_KEYS}
  hp['best_epoch'] = res['best_epoch']
  select = checkpoints.recorded_select(res)
  key = checkpoints.best_key(select)
  return {'model': res['model'], 'likelihood': cfg['model']['likelihood'], 'select': select,
          'test': res['test'], key: res[key],
          'n_test_users': res['n_test_users'], 'hparams': hp, 'wall_seconds': wall}


def baseline_stage(name: str, workdir: Path, split, grid: list[dict] | None = None,
                   eval_config=None) -> dict:
  """Grid search on validation users (by eval_config.select, default NDCG@100), the best
  refit-free, then one test evaluation."""
  select = eval_config.select if eval_config is not None else 'ndcg@100'
  metrics = tuple(dict.fromkeys((*METRICS, *(eval_config.metrics if eval_config else ()))))
  sub = workdir / name
  if (sub / 'result.json').exists():
    return json.loads((sub / 'result.json').read_text())
  sub.mkdir(parents=True, exist_ok=True)
  grid = baselines.grid(name) if grid is None else grid
  grid_log = sub / 'grid.jsonl'
  rows = [json.loads(l) for l in grid_log.read_text().splitlines() if l.strip()] \
      if grid_log.exists() else []
  done = {_key(r['grid_point']) for r in rows}
  val_set = split.heldout('val')
  for hp in grid:
    if _key(hp) in done:
      continue
    log.info('stage %s: fitting %s', name, hp)
    t0 = time.perf_counter()
    fitted = baselines.fit(name, split.train, hp, validation=val_set)
    t1 = time.perf_counter()
    val = evaluate.evaluate(fitted.score_fn, *val_set, metrics=metrics).summary()
    row = {'grid_point': hp, 'hparams': fitted.hparams, 'val': val, 'info': fitted.info,
           'fit_seconds': t1 - t0, 'eval_seconds': time.perf_counter() - t1}
    log.info('stage %s: %s val %s %.4f (%.0fs)', name, hp, select, val[select],
             row['fit_seconds'])
    if all(val[select] > r['val'][select] for r in rows):
      # Saved before the row is logged: the best logged row always has its arrays.
      baselines.save(sub, name, fitted.hparams, fitted.arrays, split.item_ids,
                     {**fitted.info, 'grid_point': hp})
    rows.append(row)
    with open(grid_log, 'a') as f:
      f.write(json.dumps(row, default=float) + '\n')
  best = max(rows, key=lambda r: r['val'][select])
  fitted, _ = baselines.load_fitted(sub)
  if _key(fitted.info.get('grid_point')) != _key(best['grid_point']):  # killed mid-save
    fitted = baselines.fit(name, split.train, best['grid_point'], validation=val_set)
    baselines.save(sub, name, fitted.hparams, fitted.arrays, split.item_ids,
                   {**fitted.info, 'grid_point': best['grid_point']})
  t0 = time.perf_counter()
  test = evaluate.evaluate(fitted.score_fn, *split.heldout('test'), metrics=metrics)
  test_seconds = time.perf_counter() - t0
  result = {'model': name, 'test': test.summary(), 'select': select,
            checkpoints.best_key(select): best['val'][select],
            'n_test_users': test.n_users, 'hparams': fitted.hparams,
            'grid': [{'hparams': r['grid_point'],
                      checkpoints.best_key(select): r['val'][select],
                      'fit_seconds': r['fit_seconds']} for r in rows],
            'info': best['info'], 'fit_seconds': best['fit_seconds'],
            'wall_seconds': sum(r['fit_seconds'] + r['eval_seconds'] for r in rows)
            + test_seconds}
  atomic_write(sub / 'result.json', json.dumps(result, indent=2, default=float))
  return result


def collect(workdir: Path) -> dict[str, dict]:
  """Every finished stage in the workdir, whichever invocation ran it."""
  out = {}
  for m in TRAINED:
    for lik in LIKELIHOODS:
      if (workdir / f'{m}-{lik}' / 'results.json').exists():
        out[f'{m}-{lik}'] = trained_row(workdir / f'{m}-{lik}')
  for m in EXPERIMENTS:
    if (workdir / m / 'results.json').exists():
      out[m] = trained_row(workdir / m)
  for name in baselines.NAMES:
    if (workdir / name / 'result.json').exists():
      out[name] = json.loads((workdir / name / 'result.json').read_text())
  return out


def main_rows(stages: dict) -> dict[str, dict]:
  """One row per model: Mult-VAE/DAE with the multinomial likelihood, baselines as fitted."""
  rows = {m: stages[f'{m}-multinomial'] for m in TRAINED if f'{m}-multinomial' in stages}
  rows.update({m: stages[m] for m in (*EXPERIMENTS, *baselines.NAMES) if m in stages})
  return rows


def orderings(rows: dict) -> dict:
  """This dataset's NDCG@100 ranking and each adjacent pair of the paper's ordering."""
  ndcg = {m: r['test']['ndcg@100'] for m, r in rows.items()}
  se = {m: r['test']['ndcg@100_se'] for m, r in rows.items()}
  paper = [m for m in PAPER_ORDER if m in ndcg]
  pairs = []
  for a, b in zip(paper, paper[1:]):
    diff = ndcg[a] - ndcg[b]
    z = diff / max(np.hypot(se[a], se[b]), 1e-12)
    pairs.append({'better': a, 'worse': b, 'diff': diff, 'holds': diff > 0,
                  'beyond_2se': abs(z) > 2})
  return {'ranking': sorted(ndcg, key=ndcg.get, reverse=True), 'paper_pairs': pairs}


def _pm(r: dict, m: str) -> str:
  return f"{r['test'][m]:.4f} ± {r['test'][m + '_se']:.4f}"


def _time(s: float) -> str:
  s = int(round(s))
  return f'{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s' if s >= 3600 else \
      f'{s // 60}m{s % 60:02d}s'


def _hp_text(hp: dict) -> str:
  return ', '.join(f'{k}={v}' for k, v in hp.items() if v is not None)


def markdown(table: dict) -> str:
  rows, lik = table['models'], table['likelihoods']
  lines = [f"# Comparison table: {table['dataset']} (strong generalisation)", '',
           f"Command: `{table['command']}`", '',
           f"{table['data']}", '',
           '| model | Recall@20 | Recall@50 | NDCG@100 | val (chosen by) | chosen hyperparameters '
           '| wall time |', '|---|---|---|---|---|---|---|']
  for m in sorted(rows, key=lambda m: -rows[m]['test']['ndcg@100']):
    r = rows[m]
    lines.append(f"| {LABELS[m]} | {_pm(r, 'recall@20')} | {_pm(r, 'recall@50')} | "
                 f"{_pm(r, 'ndcg@100')} | {_val(r):.4f} ({checkpoints.recorded_select(r)}) | "
                 f"{_hp_text(r['hparams'])} "
                 f"| {_time(r['wall_seconds'])} |")
  lines += ['', 'Test NDCG@100 by likelihood (mean ± standard error; wall time):', '',
            '| likelihood | Mult-VAE | Mult-DAE |', '|---|---|---|']
  for name in LIKELIHOODS:
    cells = [f"{_pm(lik[name][m], 'ndcg@100')} ({_time(lik[name][m]['wall_seconds'])})"
             if m in lik.get(name, {}) else 'not run' for m in TRAINED]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  o = table['orderings']
  lines += ['', 'Ranking by test NDCG@100 here: ' + ' > '.join(LABELS[m] for m in o['ranking']),
            '', "The paper's ML-20M ordering (" + ' > '.join(LABELS[m] for m in PAPER_ORDER)
            + '), pair by pair on this data:', '']
  for p in o['paper_pairs']:
    verdict = 'holds' if p['holds'] else 'reversed'
    sig = 'beyond' if p['beyond_2se'] else 'within'
    lines.append(f"- {LABELS[p['better']]} > {LABELS[p['worse']]}: {verdict} "
                 f"(difference {p['diff']:+.4f}, {sig} 2 combined standard errors)")
  lines += ['', 'Baseline notes and validation grids (the selection metric on validation '
            'users):', '']
  for m in (m for m in baselines.NAMES if m in rows):
    lines += _notes(m, rows[m])
  return '\n'.join(lines) + '\n'


def _notes(m: str, r: dict) -> list[str]:
  info, out = r.get('info', {}), []
  if 'val_ndcg@100_by_user_node' in info:
    by = info['val_ndcg@100_by_user_node']
    out.append(f"- CDAE user node of held-out users: fitted at fold-in {by['fit']:.4f}, "
               f"V_u = 0 {by['zero']:.4f}; kept: {r['hparams'].get('user_node')}")
  if 'converged' in info:
    out.append(f"- SLIM (chosen point): ADMM {info['iters']} iterations, converged "
               f"{info['converged']}, {100 * info['density']:.2f}% of weights nonzero")
  grid, key = r.get('grid', []), checkpoints.best_key(checkpoints.recorded_select(r))
  if len(grid) > 1:  # only the keys the grid varies
    keys = [k for k in grid[0]['hparams'] if len({str(g['hparams'].get(k)) for g in grid}) > 1]
    out.append(f'- {LABELS[m]} grid: ' + '; '.join(
        f"{_hp_text({k: g['hparams'].get(k) for k in keys})}: {g[key]:.4f}"
        for g in grid))
  return out


def write_table(workdir: Path, dataset: str, command: str, data_summary: str) -> dict:
  stages = collect(workdir)
  rows = main_rows(stages)
  lik = {name: {m: stages[f'{m}-{name}'] for m in TRAINED if f'{m}-{name}' in stages}
         for name in LIKELIHOODS}
  table = {'dataset': dataset, 'command': command, 'data': data_summary, 'models': rows,
           'likelihoods': lik, 'orderings': orderings(rows),
           'stages_finished': sorted(stages)}
  atomic_write(workdir / 'table.json', json.dumps(table, indent=2, default=float))
  atomic_write(workdir / 'table.md', markdown(table))
  return table


def run(config, workdir: str | Path, *, models=MODELS, likelihoods=LIKELIHOODS,
        grids: dict | None = None, split=None, command: str | None = None,
        adjust_experiments=None) -> dict:
  """Runs the missing stages, then rewrites table.md / table.json from all finished ones."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  unknown = set(models) - set(MODELS) | set(likelihoods) - set(LIKELIHOODS)
  if unknown:
    raise ValueError(f'unknown models/likelihoods {sorted(unknown)}: choose from '
                     f'{MODELS} and {LIKELIHOODS}')
  for m in set(models) - set(TRAINED) - set(EXPERIMENTS):
    baselines.module(m)  # imported now: a later edit of its file cannot touch this run
  if split is None:
    split, _ = load_split(config.data)
  for m in models:
    t0 = time.perf_counter()
    if m in TRAINED:
      for lik in likelihoods:
        trained_stage(config, workdir, m, lik, split)
    elif m in EXPERIMENTS:
      experiment_stage(config, workdir, m, split, adjust_experiments)
    else:
      baseline_stage(m, workdir, split, (grids or {}).get(m), config.eval)
    log.info('stage %s finished (%.0fs in this invocation)', m, time.perf_counter() - t0)
    write_table(workdir, config.data.name, command or ' '.join(sys.argv), _summary(split))
  return write_table(workdir, config.data.name, command or ' '.join(sys.argv), _summary(split))


def _summary(split) -> str:
  return (f'{split.train.shape[0]} training users, {split.val_tr.shape[0]} validation and '
          f'{split.test_tr.shape[0]} test users, {split.n_items} items, '
          f'{split.train.nnz} training clicks.')


def main(argv):
  from absl import flags
  del argv
  console.setup()
  f = flags.FLAGS
  run(f.config, f.workdir, models=f.models, likelihoods=f.likelihoods,
      command='vaecf-paper-table ' + ' '.join(sys.argv[1:]))


def cli():
  """Console script entry point (vaecf-paper-table); the flags exist only when the command runs."""
  # Flags are defined here, not at import, so tests can import this module beside
  # other tools that define --workdir too.
  from absl import flags
  from ml_collections import config_flags
  flags.DEFINE_string('workdir', None, 'Directory holding every stage and the table.')
  config_flags.DEFINE_config_file('config', None, 'A config file from configs/.',
                                  lock_config=True)
  flags.DEFINE_list('models', list(MODELS), f'Models to run, from {MODELS}.')
  flags.DEFINE_list('likelihoods', list(LIKELIHOODS), 'Likelihoods for Mult-VAE/DAE.')
  flags.mark_flags_as_required(['config', 'workdir'])
  console.cli(main, __name__)


if __name__ == '__main__':
  cli()
