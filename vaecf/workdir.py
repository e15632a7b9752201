"""What a run writes besides checkpoints: config.json, item ids, metrics.jsonl, results.json.

A workdir belongs to one experiment. `Workdir.start` checks, before writing
anything, that the run it would resume (one with a checkpoint) has the same config
(resumable settings excepted) and the same split (item ids and split counts), and
takes a lock so two runs never write one workdir at once. A workdir whose run failed
before its first checkpoint holds nothing to protect: the next start replaces it.
Only process 0 writes, so a multi-host run logs once.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path

import jax
import numpy as np

from vaecf.common import VaecfError, atomic_write
from vaecf.config import base_config
from vaecf.data.types import Split
from vaecf.models.registry import MOVED_MODULES

log = logging.getLogger(__name__)

# Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = ('train.epochs', 'train.eval_batch_size', 'data.cache_dir', 'data.path',
                     'distributed')
# Keys older versions of vaecf wrote and no longer read: never a reason to refuse resuming.
RETIRED_KEYS = ('train.log_every_steps',)
LOCK = '.lock'
# The merged record of a sweep grouped by shape (vaecf.sweep_groups): a folder of sweeps.
GROUPS_FILE = 'groups.json'


class WorkdirError(VaecfError, ValueError):
  """The workdir cannot be used as asked; nothing in it was changed."""


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(_flatten(v, key + '.'))
    else:
      out[key] = v
  return out


def config_changes(old: dict, new: dict, may_change=RESUMABLE_CHANGES) -> list[str]:
  """'key: old -> new' for each setting of a saved config (`old`, as JSON) that `new`
  changes, those under `may_change` excepted."""
  old, new = _flatten(old), _flatten(new)
  if old.get('model.module') in MOVED_MODULES:  # a model vaecf now installs: the same code
    old['model.module'] = ''
  # A key added to vaecf after the config was saved, at its default, is what that run did
  # (new settings default to the old behaviour): going on with it changes nothing.
  defaults = _flatten(json.loads(base_config().to_json_best_effort()))
  diffs = []
  for k in sorted(set(old) | set(new)):
    if any(k == p or k.startswith(p + '.') for p in tuple(may_change) + RETIRED_KEYS):
      continue
    if k not in old and k in defaults and new.get(k) == defaults[k]:
      continue
    if old.get(k) != new.get(k):
      diffs.append(f'{k}: {old.get(k)!r} -> {new.get(k)!r}')
  return diffs


def split_signature(split: Split) -> dict:
  """Counts that identify a split: (rows, nonzeros) of each part and the item count."""
  parts = ('train', 'val_tr', 'val_te', 'test_tr', 'test_te')
  return {'n_items': int(split.n_items),
          **{p: [int(getattr(split, p).shape[0]), int(getattr(split, p).nnz)] for p in parts}}


def has_checkpoint(path: Path) -> bool:
  ckpt = path / 'checkpoints'
  return ckpt.is_dir() and any(c.name.isdigit() for c in ckpt.iterdir())


def _parse_rows(text: str, file: Path) -> list[dict]:
  """metrics.jsonl rows; a line a kill cut short (only ever the last) is skipped."""
  rows, lines = [], [l for l in text.splitlines() if l.strip()]
  for i, line in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      if i != len(lines) - 1:
        raise WorkdirError(f'{file}: line {i + 1} is not JSON: {line[:80]!r}') from None
      log.warning('%s: dropping a half-written last line (%r)', file, line[:80])
  return rows


class Workdir:
  def __init__(self, path: str | Path):
    self.path = Path(path).expanduser().resolve()
    self.is_writer = jax.process_index() == 0
    self._lock = None

  def config_diff(self, config) -> list[str]:
    """Settings that differ from the run already in this workdir (resumable ones excepted)."""
    file = self.path / 'config.json'
    if not file.exists():
      return []
    return config_changes(json.loads(file.read_text()),
                          json.loads(config.to_json_best_effort()), RESUMABLE_CHANGES)

  def split_diff(self, split: Split) -> list[str]:
    """How `split` differs from the one the run in this workdir was trained on."""
    diffs = []
    ids_file = self.path / 'item_ids.npy'
    if ids_file.exists():
      old = np.load(ids_file, allow_pickle=False)
      if old.shape != split.item_ids.shape or not np.array_equal(old, split.item_ids):
        diffs.append(f'item ids: {len(old):,} saved, {len(split.item_ids):,} now'
                     + ('' if len(old) != len(split.item_ids) else ' (other ids or order)'))
    info_file = self.path / 'data.json'
    saved = json.loads(info_file.read_text()).get('signature') if info_file.exists() else None
    if saved is not None and saved != split_signature(split):
      diffs.append(f'split counts: {saved} saved, {split_signature(split)} now')
    return diffs

  def start(self, config, split: Split, info: dict) -> None:
    """Checks the workdir against this run, locks it, then (only then) writes to it."""
    if self.path.exists() and not self.path.is_dir():
      raise WorkdirError(f'--workdir {self.path} is a file, not a folder')
    resuming = has_checkpoint(self.path)
    if resuming:
      diffs = self.config_diff(config)
      if diffs:
        raise WorkdirError(f'{self.path} holds a run with another config; resuming it with '
                           'these changes would mix two experiments:\n  ' +
                           '\n  '.join(diffs) + '\nUse a fresh --workdir.')
      diffs = self.split_diff(split)
      if diffs:
        raise WorkdirError(f'{self.path} holds a run trained on another split; resuming it '
                           'on this data would mix two datasets:\n  ' + '\n  '.join(diffs) +
                           '\nUse a fresh --workdir (or the data the run was made with).')
    if not self.is_writer:
      return
    try:
      self.path.mkdir(parents=True, exist_ok=True)
      self.acquire()
      self._write('config.json', config.to_json_best_effort(indent=2))
      if not resuming:  # a run that never saved a checkpoint leaves nothing to keep
        info = {**info, 'signature': split_signature(split)}
        self._write('data.json', json.dumps(info, indent=2, default=str))
        atomic_write(self.path / 'item_ids.npy', lambda f: np.save(f, split.item_ids))
        self._write('metrics.jsonl', '')
    except OSError as e:
      self.close()
      raise WorkdirError(f'cannot write to --workdir {self.path}: '
                         f'{e.strerror or e} ({getattr(e, "filename", "") or self.path})') from e

  def acquire(self) -> None:
    """An exclusive lock for this process's lifetime (released by the OS even on kill -9)."""
    if self._lock is not None:
      return
    fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = os.pread(fd, 200, 0).decode(errors='replace').strip() or 'unknown'
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES):
        raise WorkdirError(f'{self.path} is in use by another run ({holder}); wait for it '
                           'to finish or use another --workdir') from None
      raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'pid {os.getpid()} on {socket.gethostname()}\n'.encode(), 0)
    self._lock = fd

  def close(self) -> None:
    if self._lock is not None:
      os.close(self._lock)
      self._lock = None

  def _write(self, name: str, text: str) -> None:
    atomic_write(self.path / name, text)

  def truncate_metrics(self, last_epoch: int) -> None:
    """Keeps only the rows of epochs up to the checkpoint the run resumes from."""
    file = self.path / 'metrics.jsonl'
    if not self.is_writer or not file.exists():
      return
    kept = [r for r in _parse_rows(file.read_text(), file) if r['epoch'] <= last_epoch]
    self._write('metrics.jsonl', ''.join(json.dumps(r) + '\n' for r in kept))

  def log_epoch(self, row: dict) -> None:
    if self.is_writer:
      with open(self.path / 'metrics.jsonl', 'a') as f:
        f.write(json.dumps(row) + '\n')

  def write_results(self, results: dict, name: str = 'results.json') -> None:
    if self.is_writer:
      self._write(name, json.dumps(results, indent=2))


def read_metrics(path: str | Path) -> list[dict]:
  file = Path(path) / 'metrics.jsonl'
  return _parse_rows(file.read_text(), file)


def load_config(path: str | Path):
  """The config of the run in `path`, on top of today's defaults.

  Keys added to vaecf after the run was made take their default value, and
  JSON lists come back as tuples where the default is a tuple.
  """
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
      elif f'{prefix}{k}' not in RETIRED_KEYS:
        with dst.unlocked():
          dst[k] = v  # an experiment's own key: kept as saved
  merge(config, saved)
  return config
