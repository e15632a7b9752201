"""A tune folder's records, kept as a training workdir keeps its own.

A tune, and an ensemble over it, holds the folder's lock for the whole command, so two
commands never rewrite tune.json each from its own copy. tune.json records the split's
signature, the selection metric and, for each model, the config it was tuned under: a
rerun that would mix two datasets or two settings is refused, naming what changed, before
anything is written. Rounds are recorded relative to the folder, so a moved or copied
tune opens its own rounds and never the original's.
"""
from __future__ import annotations

import json
from pathlib import Path

from vaecf import checkpoints
from vaecf.config import ConfigError
from vaecf.workdir import Workdir, WorkdirError, config_changes, split_signature

STATE = 'tune.json'
# Settings a tune may be rerun with: where the data and cache are, how evaluation is
# batched, how processes find each other. Everything else changes what a point scores.
MAY_CHANGE = ('data.path', 'data.cache_dir', 'train.eval_batch_size', 'distributed')
# A baseline reads the data and the metrics of a config, nothing of its model or training.
BASELINE_SECTIONS = ('data', 'eval')


def read_state(folder: Path) -> dict:
  """tune.json, or a fresh record; a damaged file is named and left as it is."""
  path = folder / STATE
  if not path.exists():
    return {'models': {}}
  try:
    state = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise WorkdirError(f'{path} is not valid JSON ({e}); it was left as it is: restore it, '
                       'or move it aside to tune from scratch') from None
  if not isinstance(state, dict) or not isinstance(state.get('models'), dict):
    raise WorkdirError(f'{path} is not a tune record (a JSON object with "models"); it was '
                       'left as it is: move it aside to tune from scratch')
  return state


def config_record(config, baseline: bool) -> dict:
  saved = json.loads(config.to_json_best_effort())
  return {k: saved[k] for k in BASELINE_SECTIONS if k in saved} if baseline else saved


def check_select(state: dict, select: str, folder: Path) -> None:
  """Refuses to go on with (or ensemble) a tune chosen by another metric than `select`:
  their scores cannot be compared."""
  recorded = checkpoints.recorded_select(state) if state['models'] else select
  if recorded != select:
    raise ConfigError(f'{folder / STATE} chose its points by validation {recorded}; this '
                      f'call selects by eval.select={select!r}, and mixing the two would '
                      f'compare unlike scores: pass --config.eval.select={recorded} or use '
                      'another folder')


def check(folder: Path, state: dict, split, configs: dict[str, dict]) -> None:
  """Refuses a rerun on other data, or of a model under another config than its record's.

  `configs` maps each model this call tunes to its config_record.
  """
  path = folder / STATE
  saved = state.get('signature')
  if saved is not None and saved != split_signature(split):
    raise WorkdirError(f'{path} was tuned on another split; going on here would mix two '
                       f'datasets:\n  {saved} saved\n  {split_signature(split)} now\nUse '
                       'the data and config the tune was made with, or a fresh --workdir.')
  problems = []
  for name, new in configs.items():
    old = state['models'].get(name, {}).get('config')
    if old is not None:
      problems += [f'{name}: {d}' for d in config_changes(old, new, MAY_CHANGE)]
  if problems:
    raise WorkdirError(f'{path} tuned these models under another config; going on would '
                       'let points of two settings compete:\n  ' + '\n  '.join(problems) +
                       '\nRerun with the recorded settings, or use a fresh --workdir.')


def lock(folder: Path) -> Workdir:
  """The folder's lock, held until the returned Workdir is closed (or the process ends)."""
  wd = Workdir(folder)
  if wd.path.exists() and not wd.path.is_dir():
    raise WorkdirError(f'{wd.path} is a file, not a folder')
  wd.path.mkdir(parents=True, exist_ok=True)
  wd.acquire()
  return wd


def relative(folder: Path, path: Path) -> str:
  return str(Path(path).resolve().relative_to(Path(folder).resolve()))


def resolve(folder: Path, stored: str) -> Path:
  """A recorded round's folder: relative to the tune's (older records: absolute)."""
  p = Path(stored)
  return p if p.is_absolute() else Path(folder) / p
