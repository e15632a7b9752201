"""Prepares a dataset's split and optionally exports it as CSV files.

  python -m vaecf.data --config=configs/ml1m.py --config.data.path=PATH/ml-1m --export_dir=DIR

Writes train.csv, validation_tr.csv, validation_te.csv, test_tr.csv and test_te.csv
(header `user,item`, ORIGINAL ids, sorted by (user, item)) so other libraries can
be run on exactly the same split, and prints the counts of each part.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from vaecf.data import load_split
from vaecf.data.types import Split

flags.DEFINE_string('export_dir', None, 'Where to write the five CSV files (optional).')
config_flags.DEFINE_config_file('config', None, 'A config file from configs/.',
                                lock_config=True)
flags.mark_flags_as_required(['config'])
FLAGS = flags.FLAGS

PARTS = {'train.csv': ('train', 'train_user_ids'),
         'validation_tr.csv': ('val_tr', 'val_user_ids'),
         'validation_te.csv': ('val_te', 'val_user_ids'),
         'test_tr.csv': ('test_tr', 'test_user_ids'),
         'test_te.csv': ('test_te', 'test_user_ids')}


def part_pairs(split: Split, part: str, users_attr: str) -> tuple[np.ndarray, np.ndarray]:
  """(original user ids, original item ids) of a part, sorted by (user, item)."""
  m = getattr(split, part).tocoo()
  users = getattr(split, users_attr)[m.row]
  items = split.item_ids[m.col]
  order = np.lexsort((items, users))
  return users[order], items[order]


def export(split: Split, out_dir: str | Path) -> dict[str, int]:
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  counts = {}
  for name, (part, users_attr) in PARTS.items():
    users, items = part_pairs(split, part, users_attr)
    with open(out / name, 'w') as f:
      f.write('user,item\n')
      f.writelines(f'{u},{i}\n' for u, i in zip(users.tolist(), items.tolist()))
    counts[name] = len(users)
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
  app.run(console.guarded(main))


if __name__ == '__main__':
  run()
