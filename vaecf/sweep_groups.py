"""A sweep whose grid also names settings that change shapes: one vmapped sweep per shape.

Knobs that change a parameter's shape (`latent_dim`, `hidden_dims`, H+Vamp's
`n_pseudo_inputs`, ...) cannot share a jitted step, so the grid's points are grouped by
their values of those knobs and each group is an ordinary vaecf.sweep over the traced
knobs, in DIR/<knob>=<value>[,...]/ (resumable on its own). A group with no traced knob
left is a sweep of one model: the single run. The groups' results are merged into one
record, DIR/groups.json, whose models carry their whole point, their group's workdir and
their index there (and, as in a sweep's record, their best validation value under
'val_<config.eval.select>').

`hidden_dims=v` sets every hidden layer to width v, keeping the depth of the config's
`model.hidden_dims` (which must then be set, so that the depth is stated).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from vaecf import models, sweep, train
from vaecf.common import atomic_write
from vaecf.config import validate
from vaecf.data.types import Split
from vaecf.workdir import GROUPS_FILE

log = logging.getLogger(__name__)


def shape_knobs(config, points: list[dict]) -> list[str]:
  """The knobs of `points` that are settings of config.model but not traced by its step."""
  if not points:
    return []
  train.import_model_module(config)
  model = models.build(config, 2)
  traced = set(sweep.TRAIN_KNOBS) | set(model.hparams)
  return [k for k in points[0] if k not in traced and k in config.model]


def shape_config(config, shape: dict[str, float]):
  """`config` with the shape settings of one group."""
  return sweep.model_config(config, shape)


def group_name(shape: dict[str, float]) -> str:
  """The group's folder: every value in full (repr), so two shapes never share one."""
  return ','.join(f'{k}={v!r}' for k, v in shape.items())


def groups(config, points: list[dict]) -> list[tuple[dict, list[dict], list[int]]]:
  """[(shape point, the group's traced points, their indices in `points`)], in the order
  the shapes first appear. A group without traced knobs gets one point of
  config.sweep.mode's knob at the config's value (a sweep of one model)."""
  names = shape_knobs(config, points)
  out: dict[str, tuple[dict, list[dict], list[int]]] = {}
  for i, p in enumerate(points):
    shape = {k: sweep.setting(config, k, p[k]) for k in names}  # 8 and 8.0 are one shape
    entry = out.setdefault(json.dumps(shape), (shape, [], []))
    entry[1].append({k: v for k, v in p.items() if k not in names})
    entry[2].append(i)
  # A group left without traced knobs is one model at the config's cap (set for every
  # model; one that ignores beta ignores it).
  default = {'anneal_cap': float(config.train.anneal_cap)}
  return [(s, [q or default for q in qs], idx) for s, qs, idx in out.values()]


def check_grid(config, points: list[dict] | None = None, n_items: int = 2
               ) -> tuple[list[dict], list[tuple[dict, list[dict], list[int], object]]]:
  """(points, [(shape, traced points, their indices, the group's config)]), or a
  ConfigError naming every bad knob, value and repeated point (vaecf.sweep.check_points)
  and any knob a group's model does not trace. Needs no data (`n_items` only sizes the
  models built to ask what they trace), so a command calls it before reading any."""
  validate(config)  # a malformed grid string is named as the config's other problems are
  points = sweep.grid_points(config) if points is None else [dict(p) for p in points]
  sweep.check_points(config, points)
  plan = []
  for shape, traced, idx in groups(config, points):
    c = shape_config(config, shape)
    sweep.check_traceable(c, models.build(c, n_items), traced)
    plan.append((shape, traced, idx, c))
  return points, plan


def train_groups(config, workdir: str | Path, *, split: Split,
                 models_per_pass: int | None = None, points: list[dict] | None = None
                 ) -> dict:
  """Every group's sweep (each resumes itself); returns and writes the merged
  DIR/groups.json (not sweep.json: DIR itself is no sweep). Every group is checked
  (`check_grid`) before anything trains, so a bad point is named before any workdir is
  written."""
  workdir = Path(workdir)
  points, plan = check_grid(config, points, split.n_items)
  merged: list[dict | None] = [None] * len(points)
  group_records = []
  for shape, traced, idx, c in plan:
    sub = workdir / group_name(shape)
    log.info('shape group %s: %d model(s) in %s', group_name(shape) or '-', len(traced), sub)
    res = sweep.train_sweep(c, sub, split=split, points=traced,
                            models_per_pass=models_per_pass)
    group_records.append({'shape': shape, 'workdir': str(sub), 'points': traced,
                          'test_eval_seconds': res['test_eval_seconds']})
    for m, i in zip(res['models'], idx):
      merged[i] = {**m, 'point': points[i], 'value': points[i][next(iter(points[i]))],
                   'workdir': str(sub)}  # 'index': its place in that group's sweep
  first = points[0]
  results = {'model': config.model.name, 'dataset': config.data.name, 'mode': 'grid',
             'knob': next(iter(first)), 'values': [p[next(iter(first))] for p in points],
             'points': points, 'select': config.eval.select, 'models': merged,
             'groups': group_records,
             'test_eval_seconds': sum(g['test_eval_seconds'] for g in group_records)}
  workdir.mkdir(parents=True, exist_ok=True)
  atomic_write(workdir / GROUPS_FILE, json.dumps(results, indent=2))
  return results
