"""Data pipeline: read a dataset, preprocess it as the paper does, split it, cache it.

`load_split(config.data)` is the one call the trainer and the baselines use.
"""
from __future__ import annotations

import logging
from pathlib import Path

from vaecf.data import cache
from vaecf.data.split import preprocess, strong_generalization_split
from vaecf.data.types import DataError, Interactions, Split

log = logging.getLogger(__name__)

EMBEDDED = Path(__file__).resolve().parent.parent / 'datasets' / 'ml-latest-small'
MOVIELENS = ('ml-100k', 'ml-1m', 'ml-20m', 'ml-latest-small')

__all__ = ['DataError', 'Interactions', 'Split', 'load_split', 'resolve_path', 'EMBEDDED']


def resolve_path(data_config) -> Path:
  """The input file or folder named by the config ('' -> embedded or downloaded)."""
  if data_config.path:
    p = Path(data_config.path).expanduser()
    if not p.exists():
      raise DataError(f'config.data.path={data_config.path!r} does not exist '
                      f'(resolved to {p.resolve()})')
    return p
  if data_config.name == 'ml-latest-small':
    return EMBEDDED
  if data_config.name in MOVIELENS:
    from vaecf.data import download
    return download.fetch_movielens(data_config.name, _cache_dir(data_config) / 'downloads')
  raise DataError(f'config.data.path is empty and {data_config.name!r} is not a MovieLens '
                  'dataset vaecf can fetch: set --config.data.path to its file or folder')


def _cache_dir(data_config) -> Path:
  return Path(data_config.cache_dir).expanduser() if data_config.cache_dir else \
      cache.default_cache_dir()


def _settings(d) -> dict:
  return {k: d[k] for k in ('format', 'rating_threshold', 'min_user_count', 'min_item_count',
                            'n_heldout_users', 'heldout_fraction', 'split_seed', 'test_prop',
                            'user_col', 'item_col', 'value_col', 'delimiter')}


def read(data_config, path: Path | None = None) -> Interactions:
  from vaecf.data import readers
  path = resolve_path(data_config) if path is None else path
  kw = {}
  if data_config.format == 'delimited':
    kw = dict(user_col=_col(data_config.user_col), item_col=_col(data_config.item_col),
              value_col=_col(data_config.value_col) if data_config.value_col else None,
              delimiter=data_config.delimiter)
  return readers.read_interactions(path, data_config.format, **kw)


def _col(c: str):
  return int(c) if str(c).isdigit() else c


def load_split(data_config, *, use_cache: bool = True) -> tuple[Split, dict]:
  """(split, info) for the config; info holds the preprocessing report and counts."""
  path = resolve_path(data_config)
  settings = _settings(data_config)
  file = _cache_dir(data_config) / 'splits' / f'{data_config.name}-{cache.cache_key(settings, path)}.npz'
  if use_cache and file.exists():
    try:
      split, info = cache.load(file)
      log.info('loaded cached split %s', file)
      return split, info
    except Exception as e:  # a damaged cache is rebuilt, never trusted
      log.warning('ignoring unreadable split cache %s (%s)', file, e)
  inter = read(data_config, path)
  kept, report = preprocess(inter, rating_threshold=data_config.rating_threshold,
                            min_user_count=data_config.min_user_count,
                            min_item_count=data_config.min_item_count)
  del inter  # the raw rows are not needed for the split: give their memory back
  if report.duplicates:
    log.warning('%s: %d duplicate (user, item) rows counted once', path, report.duplicates)
  split = strong_generalization_split(kept, data_config.n_heldout_users,
                                      heldout_fraction=data_config.heldout_fraction,
                                      seed=data_config.split_seed, test_prop=data_config.test_prop)
  del kept
  info = {'name': data_config.name, 'path': str(path), 'preprocess': vars(report),
          'summary': cache.split_summary(split)}
  if use_cache:
    try:
      cache.save(file, split, info)
    except OSError as e:  # the cache only saves time: never fail a run over it
      log.warning('could not write the split cache %s (%s); continuing without it', file,
                  e.strerror or e)
  return split, info
