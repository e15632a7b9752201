"""Prepares a dataset's split and optionally exports it as CSV files.

  vaecf-data --config=configs/multvae.py:ml-1m --config.data.path=PATH/ml-1m --export_dir=DIR

Writes train.csv, validation_tr.csv, validation_te.csv, test_tr.csv and test_te.csv
(header `user,item`, ORIGINAL ids, sorted by (user, item), quoted as CSV requires) so
other libraries can be run on exactly the same split, and prints the counts of each part.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from vaecf.data import load_split, textio
from vaecf.data.types import Split


def _define_flags():
  # Only for the command: importing this module (tests, other tools) defines no flags.
  flags.DEFINE_string('export_dir', None, 'Where to write the five CSV files (optional).')
  config_flags.DEFINE_config_file('config', None, 'A config file from configs/.',
                                  lock_config=True)
  flags.mark_flags_as_required(['config'])


FLAGS = flags.FLAGS

# Lines formatted at a time: the MSD's train part as Python strings (or as
# one unicode array) would take several GB.
_LINES = 1 << 20
PARTS = {'train.csv': ('train', 'train_user_ids'),
         'validation_tr.csv': ('val_tr', 'val_user_ids'),
         'validation_te.csv': ('val_te', 'val_user_ids'),
         'test_tr.csv': ('test_tr', 'test_user_ids'),
         'test_te.csv': ('test_te', 'test_user_ids')}


def _sorted_keys(split: Split, part: str, users_attr: str):
  """The part's pairs as sorted int64 keys (user rank * items + item rank), and
  the positions of the users and items in order of their original ids."""
  m = getattr(split, part)
  users = getattr(split, users_attr)
  u_order = np.argsort(users, kind='stable')
  i_order = np.argsort(split.item_ids, kind='stable')
  u_rank = np.empty(len(users), np.int64)
  u_rank[u_order] = np.arange(len(users))
  i_rank = np.empty(len(i_order), np.int64)
  i_rank[i_order] = np.arange(len(i_order))
  n_items = max(1, len(i_order))
  key = u_rank[np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))] * n_items
  key += i_rank[m.indices]
  key.sort()
  return key, n_items, u_order, i_order


def part_pairs(split: Split, part: str, users_attr: str) -> tuple[np.ndarray, np.ndarray]:
  """(original user ids, original item ids) of a part, sorted by (user, item)."""
  key, n_items, u_order, i_order = _sorted_keys(split, part, users_attr)
  return (getattr(split, users_attr)[u_order[key // n_items]],
          split.item_ids[i_order[key % n_items]])


def csv_fields(ids: np.ndarray) -> np.ndarray:
  """Ids as UTF-8 byte strings ('S' array) ready for `textio.format_lines`, those that
  CSV must quote (a comma, a double quote, a line break) quoted by the csv module.

  Each distinct id is quoted once, here, rather than each row by a csv.writer: the rows
  then still go out vectorised (the MSD's train part has 33M of them).
  """
  raw = textio.as_bytes(ids)
  if not len(raw):
    return raw
  mat = np.ascontiguousarray(raw).view(np.uint8).reshape(len(raw), raw.dtype.itemsize)
  special = np.isin(mat, np.frombuffer(b',"\r\n', np.uint8)).any(axis=1)
  if not special.any():
    return raw
  buf = io.StringIO()
  # '\r' in the line terminator: the csv module then quotes an id holding one, too.
  writer = csv.writer(buf, lineterminator='\r\n')
  quoted = []
  for b in raw[special].tolist():
    buf.seek(0)
    buf.truncate()
    writer.writerow([b.decode('utf-8')])
    quoted.append(buf.getvalue()[:-2].encode('utf-8'))
  out = raw.astype(f'S{max(raw.dtype.itemsize, max(map(len, quoted)))}')
  out[special] = quoted
  return out


def export(split: Split, out_dir: str | Path) -> dict[str, int]:
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  counts = {}
  item_bytes = csv_fields(split.item_ids)
  for name, (part, users_attr) in PARTS.items():
    key, n_items, u_order, i_order = _sorted_keys(split, part, users_attr)
    user_bytes = csv_fields(getattr(split, users_attr))
    with open(out / name, 'wb') as f:
      f.write(b'user,item\n')
      for s in range(0, len(key), _LINES):
        k = key[s:s + _LINES]
        f.write(textio.format_lines([user_bytes[u_order[k // n_items]],
                                     item_bytes[i_order[k % n_items]]]))
    counts[name] = len(key)
  return counts


def format_summary(info: dict) -> str:
  pre = info['preprocess']
  lines = [f"{info['name']} ({info['path']})",
           f"  read {pre['raw']:,} rows; {pre['below_threshold']:,} at or below the threshold, "
           f"{pre['duplicates']:,} duplicates, {pre['dropped_by_item_count']:,} + "
           f"{pre['dropped_by_user_count']:,} dropped by item/user counts",
           f"  kept {pre['kept']:,} interactions, {pre['users']:,} users, {pre['items']:,} items",
           f"  {'part':<10} {'users':>9} {'items':>7} {'interactions':>13} {'sparsity':>9}"]
  for part, s in info['summary'].items():
    lines.append(f"  {part:<10} {s['users']:>9,} {s['items']:>7,} {s['interactions']:>13,} "
                 f"{1 - s['density']:>9.5f}")
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from vaecf import console
  console.setup()
  split, info = load_split(FLAGS.config.data)
  print(format_summary(info))
  if FLAGS.export_dir:
    counts = export(split, FLAGS.export_dir)
    print(f'wrote {FLAGS.export_dir}: ' + json.dumps(counts))


def run():
  """Console script entry point (vaecf-data)."""
  from vaecf import console
  _define_flags()
  console.cli(main, __name__)


if __name__ == '__main__':
  run()
