"""What a run writes besides checkpoints: config.json, item ids, metrics.jsonl, results.json.

Only process 0 writes, so a multi-host run logs once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np

from vaecf.data.types import Split

# Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = ('train.epochs', 'train.log_every_steps', 'train.eval_batch_size',
                     'data.cache_dir', 'data.path', 'distributed')


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(_flatten(v, key + '.'))
    else:
      out[key] = v
  return out


class Workdir:
  def __init__(self, path: str | Path):
    self.path = Path(path).resolve()
    self.is_writer = jax.process_index() == 0

  def config_diff(self, config) -> list[str]:
    """Settings that differ from the run already in this workdir (resumable ones excepted)."""
    file = self.path / 'config.json'
    if not file.exists():
      return []
    old = _flatten(json.loads(file.read_text()))
    new = _flatten(json.loads(config.to_json_best_effort()))
    diffs = []
    for k in sorted(set(old) | set(new)):
      if any(k == p or k.startswith(p + '.') for p in RESUMABLE_CHANGES):
        continue
      if old.get(k) != new.get(k):
        diffs.append(f'{k}: {old.get(k)!r} -> {new.get(k)!r}')
    return diffs

  def start(self, config, split: Split, info: dict) -> None:
    diffs = self.config_diff(config)
    if diffs:
      raise ValueError(f'{self.path} holds a run with another config; resuming it with '
                       'these changes would mix two experiments:\n  ' + '\n  '.join(diffs) +
                       '\nUse a fresh --workdir.')
    if not self.is_writer:
      return
    self.path.mkdir(parents=True, exist_ok=True)
    self._write('config.json', config.to_json_best_effort(indent=2))
    self._write('data.json', json.dumps(info, indent=2, default=str))
    np.save(self.path / 'item_ids.npy', split.item_ids)

  def _write(self, name: str, text: str) -> None:
    tmp = self.path / (name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, self.path / name)

  def truncate_metrics(self, last_epoch: int) -> None:
    """Drops lines logged after the checkpoint we resume from."""
    file = self.path / 'metrics.jsonl'
    if not self.is_writer or not file.exists():
      return
    rows = [json.loads(l) for l in file.read_text().splitlines() if l.strip()]
    kept = [r for r in rows if r['epoch'] <= last_epoch]
    self._write('metrics.jsonl', ''.join(json.dumps(r) + '\n' for r in kept))

  def log_epoch(self, row: dict) -> None:
    if self.is_writer:
      with open(self.path / 'metrics.jsonl', 'a') as f:
        f.write(json.dumps(row) + '\n')

  def write_results(self, results: dict) -> None:
    if self.is_writer:
      self._write('results.json', json.dumps(results, indent=2))


def read_metrics(path: str | Path) -> list[dict]:
  file = Path(path) / 'metrics.jsonl'
  return [json.loads(l) for l in file.read_text().splitlines() if l.strip()]


def load_config(path: str | Path):
  """The config of the run in `path`, on top of today's defaults.

  Keys added to vaecf after the run was made take their default value, and
  JSON lists come back as tuples where the default is a tuple.
  """
  from vaecf.config import base_config
  saved = json.loads((Path(path) / 'config.json').read_text())
  config = base_config()

  def merge(dst, src, prefix=''):
    for k, v in src.items():
      if isinstance(v, dict) and k in dst:
        merge(dst[k], v, f'{prefix}{k}.')
      elif k in dst:
        default = dst[k]
        if isinstance(v, list) and (isinstance(default, tuple) or default is None):
          v = tuple(v)
        with dst.ignore_type():
          dst[k] = v
      else:
        with dst.unlocked():
          dst[k] = v  # an experiment's own key: kept as saved
  merge(config, saved)
  return config
