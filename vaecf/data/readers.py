"""Readers for the raw rating files of MovieLens, Netflix Prize and the MSD.

Every reader returns `Interactions`: rows in file order, ids as int32 codes into
sorted vocabularies of the ORIGINAL ids, float32 values. The block-wise parsing
and the id coding live in `textio`.

It is a few lines longer than 300 lines because it holds one small reader per format
(six of them), with their format-specific error messages, beside the dispatch
that picks one; a module per format would be a dozen lines each.
"""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Union

import numpy as np

from vaecf.data import textio
from vaecf.data.textio import explain, fail, fields_error, head, is_number, loadtxt
from vaecf.data.types import DataError, Interactions

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
_ML = 'https://files.grouplens.org/datasets/movielens'
_SOURCES = {  # what to put where, for the file-not-found messages
    'movielens_csv': f'ratings.csv from {_ML}/ml-20m.zip (or ml-latest.zip)',
    'movielens_dat': f'ratings.dat from {_ML}/ml-1m.zip',
    'movielens_100k': f'u.data from {_ML}/ml-100k.zip',
    'netflix': 'combined_data_1..4.txt (Kaggle netflix-prize-data) or the '
               'training_set/ folder of mv_*.txt from the Netflix Prize archive',
    'msd': 'train_triplets.txt from http://millionsongdataset.com/tasteprofile/',
    'delimited': 'your delimited ratings file',
}
_NAMES = {  # file or folder names of each format (without .gz), best first
    'movielens_csv': r'ratings.*\.csv', 'movielens_dat': r'ratings.*\.dat',
    'movielens_100k': r'u\.data',
    'netflix': r'combined_data.*|mv_.*|training_set', 'msd': r'.*triplets.*',
}
_EXPECTED = ('ratings.csv (MovieLens 20M/latest), ratings*.dat[.gz] (MovieLens '
             '1M), u.data (MovieLens 100K), combined_data_*.txt or training_set/ '
             '(Netflix) or *triplets*.txt (Million Song Dataset)')


def _match(name: str) -> str | None:
  name = name.lower().removesuffix('.gz')
  return next((f for f, p in _NAMES.items() if re.fullmatch(p, name)), None)


def _find(folder: Path, fmt: str | None) -> tuple[str, Path] | None:
  """The best ratings file (of format `fmt`, if given) in `folder`."""
  if _match(folder.name) == 'netflix' and fmt in (None, 'netflix'):
    return 'netflix', folder
  hits = [(f, c) for c in sorted(folder.iterdir())
          if (f := _match(c.name)) and fmt in (None, f)]
  if not hits:
    return None
  # By format, then the canonical name: a real ML-1M download has ratings.dat.
  f, child = min(hits, key=lambda h: (
      list(_NAMES).index(h[0]), h[1].name not in ('ratings.csv', 'ratings.dat')))
  # Netflix files are read all together: give their folder.
  return f, folder if f == 'netflix' and child.is_file() else child


def _locate(path: PathLike, fmt: str) -> Path:
  """`path` itself, or the file of format `fmt` in the folder `path`."""
  path = Path(path)
  if path.is_dir() and fmt != 'netflix':
    if (hit := _find(path, fmt)) is None:
      raise DataError(f'{path}: no {fmt} ratings file in this folder; put '
                      f'{_SOURCES[fmt]} there')
    return hit[1]
  if not path.exists():
    raise DataError(f'{path}: file not found; put {_SOURCES[fmt]} at this path')
  return path


def _interactions(path: Path, users, items, values) -> Interactions:
  """From scanned (codes, ids) pairs of users and items and the values."""
  return Interactions(users[0], items[0], values, users[1], items[1], str(path))


def _ratings(path: Path, sep: bytes, names: list[str], header=False, quote=False):
  """Interactions from int user, int item and float rating in columns 0-2."""
  columns = list(zip(names, ['int', 'int', 'float', 'skip']))
  return _interactions(path, *textio.scan(path, sep, columns, header=header, quote=quote))


def read_movielens_csv(path: PathLike) -> Interactions:
  """MovieLens 20M / latest `ratings.csv` (header userId,movieId,rating,...).

  A UTF-8 BOM before the header and CSV double quotes around fields are dropped.
  """
  path = _locate(path, 'movielens_csv')
  names = [f.decode() for f in textio.split_line(head(path)[0].encode(), b',', True)]
  if names[:3] != ['userId', 'movieId', 'rating'] or len(names) > 4:
    raise fail(path, 1, "expected the header 'userId,movieId,rating,timestamp'")
  return _ratings(path, b',', names, header=True, quote=True)


def read_movielens_dat(path: PathLike) -> Interactions:
  """MovieLens 1M `ratings.dat[.gz]`: UserID::MovieID::Rating[::Timestamp]."""
  path = _locate(path, 'movielens_dat')
  ncols = head(path)[0].count('::') + 1
  if ncols not in (3, 4):
    raise fail(path, 1, 'expected UserID::MovieID::Rating[::Timestamp]')
  return _ratings(path, b'::', ['UserID', 'MovieID', 'Rating', 'Timestamp'][:ncols])


def read_movielens_100k(path: PathLike) -> Interactions:
  """MovieLens 100K `u.data`: tab-separated user, item, rating, timestamp."""
  path = _locate(path, 'movielens_100k')
  return _ratings(path, b'\t', ['user id', 'item id', 'rating', 'timestamp'])


def read_msd_triplets(path: PathLike) -> Interactions:
  """Taste Profile `train_triplets.txt`: user, song, play count (tab); ids as text."""
  path = _locate(path, 'msd')
  columns = [('user', 'text'), ('song', 'text'), ('play count', 'float')]
  return _interactions(path, *textio.scan(path, b'\t', columns))


_NETFLIX_ROW = [('CustomerID', 'int'), ('Rating', 'float'), ('Date', 'text')]


def _netflix_error(path: Path, before: int, text: bytes,
                   movie: int | bytes | None) -> DataError:
  """Names the first bad line of a Netflix block numpy refused."""
  def why(line: bytes) -> str | None:
    nonlocal movie
    if line.endswith(b':'):
      movie = line[:-1]
      return fields_error([movie], [('MovieID', 'int')], '')
    if line.count(b',') != 2:
      return "expected 'MovieID:' or 'CustomerID,Rating,Date'"
    if movie is None:
      return "rating before any 'MovieID:' line"
    return fields_error(line.split(b','), _NETFLIX_ROW, '')
  return explain(path, before, text, why)


def _netflix_file(path: Path, vocab: tuple, out: tuple, size: list[Path]) -> None:
  """Appends the user codes, item codes and ratings of one combined_data_*.txt
  or mv_*.txt file to the columns `out` (sized for all the files `size`)."""
  movie, n = None, 0
  for before, text in textio.chunks(path):
    if not text or text.isspace():
      continue
    text += b'' if text.endswith(b'\n') else b'\n'
    # 'MovieID:' lines become rows 'MovieID,0,:' so that one numpy call reads
    # both kinds of line, and the date ':' tells them apart. (A rating row
    # that ends in ':' gets 5 fields and fails; 'S2' keeps ':x' apart.)
    arr = loadtxt(text.replace(b':\n', b',0,:\n'), ',', ['i8', 'f8', 'S2'])
    is_movie = None if arr is None else arr['c2'] == b':'
    if is_movie is None or movie is None and not is_movie[0]:
      raise _netflix_error(path, before, text, movie)
    # A rating belongs to the nearest 'MovieID:' line above it, which may lie
    # in an earlier block (then `movie`).
    owner = np.maximum.accumulate(np.where(is_movie, np.arange(len(is_movie)), -1))[~is_movie]
    ids = arr['c0']
    items = np.where(owner >= 0, ids[np.maximum(owner, 0)], movie or 0)
    movie = int(ids[is_movie][-1]) if is_movie.any() else movie
    if not out[0].n:
      for col in out:
        col.reserve(textio.expected_rows(size, text, len(items)))
    out[0].append(vocab[0].add(ids[~is_movie]))
    out[1].append(vocab[1].add(items))
    out[2].append(arr['c1'][~is_movie])
    n += len(items)
    del arr, ids, items, owner
  if not n:
    raise DataError(f'{path}: no ratings in the file (it is empty)')


def read_netflix(path: PathLike) -> Interactions:
  """Netflix Prize: one combined_data_*.txt, or a folder of those or mv_*.txt."""
  path = _locate(path, 'netflix')
  files = [path]
  if path.is_dir():
    if (path / 'training_set').is_dir():
      path = path / 'training_set'
    files = sorted(p for p in path.iterdir() if p.is_file() and
                   re.match(r'combined_data|mv_', p.name.lower()))
    if not files:
      raise DataError(f'{path}: no combined_data_*.txt or mv_*.txt files; put '
                      f'{_SOURCES["netflix"]} there')
  vocab = textio.Vocabulary(), textio.Vocabulary()
  out = textio.Column(np.int32), textio.Column(np.int32), textio.Column(np.float32)
  for f in files:
    _netflix_file(f, vocab, out, files)
  users, items = (v.finish(c.array()) for v, c in zip(vocab, out))
  return _interactions(path, users, items, out[2].array())


def read_delimited(path: PathLike, *, user_col: int | str, item_col: int | str,
                   value_col: int | str | None = None, delimiter: str = ',',
                   header: Union[bool, str] = 'infer') -> Interactions:
  """Any delimited file; columns by header name or 0-based number.

  Ids are never changed. They are read as text, with a leading UTF-8 BOM,
  CSV double quotes around a field and spaces around an id dropped (a quoted
  field may hold the delimiter). A column in which every id is the plain
  decimal form of an integer ('17', '-3'; not '007' or '+3') becomes int64;
  otherwise the whole column stays text, so '17' and '"17"' are one id, and
  '007' and '7' two, whatever else the column holds. Without `value_col`
  every value is 1.0. `header='infer'` assumes a header when columns are
  named, or when line 1 holds no number but line 2 does.
  """
  path = _locate(path, 'delimited')
  sep = delimiter.encode()
  first = [textio.split_line(line.encode(), sep, len(sep) == 1) for line in head(path, 2)]
  names = [n.decode('utf-8', 'replace').strip() for n in first[0]]
  wanted = [c for c in (user_col, item_col, value_col) if c is not None]
  if header == 'infer':
    header = any(isinstance(c, str) for c in wanted) or (
        not any(is_number(n, 'f8') for n in names)
        and any(is_number(n, 'f8') for n in first[1]))
  index = []
  for c in wanted:
    if isinstance(c, str):
      if not header or c not in names:
        raise DataError(f'{path}: no column named {c!r} in the header '
                        f'{names if header else "(the file has none)"}' + _delimiter_hint(
                            names, delimiter))
      c = names.index(c)
    if not 0 <= c < len(names):
      raise DataError(f'{path}: no column {c}: line 1 has {len(names)} fields')
    index.append(c)
  label = [n if header else f'column {k}' for k, n in enumerate(names)]
  kinds = ['skip'] * len(names)
  for c, kind in zip(index, ('text', 'text', 'float')):
    kinds[c] = kind
  columns = list(zip(label, kinds))
  out = textio.scan(path, sep, columns, header=bool(header), quote=len(sep) == 1)
  by_col = dict(zip([k for k, kind in enumerate(kinds) if kind != 'skip'], out))
  users, items = (_plain_ids(*by_col[c]) for c in index[:2])
  values = by_col[index[2]] if value_col is not None else np.ones(len(users[0]), np.float32)
  return _interactions(path, users, items, values)


def _delimiter_hint(names: list[str], delimiter: str) -> str:
  """A line 1 read as one field that another separator would split: say which."""
  if len(names) != 1:
    return ''
  for sep, flag in (('\t', "$'\\t'"), (';', ';'), ('|', '|'), (',', ','), (' ', "' '")):
    if sep != delimiter and sep in names[0]:
      return (f'; line 1 holds {names[0].count(sep) + 1} fields separated by {sep!r}: pass '
              f'--config.data.delimiter={flag}')
  return ''


def _plain_ids(codes: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Text ids without surrounding spaces, as int64 if every one is a plain integer."""
  stripped = np.char.strip(ids, ' ')
  if len(ids) and (stripped != ids).any():
    codes, ids = textio.recode(codes, stripped)
  try:
    ints = ids.astype(np.int64)
  except (ValueError, OverflowError):
    _warn_alike(ids)
    return codes, ids
  # str(int(x)) == x: no sign but '-', no leading zero, no '_' or space.
  if not np.array_equal(ints.astype(ids.dtype), ids):
    _warn_alike(ids)
    return codes, ids
  return textio.recode(codes, ints)


def _warn_alike(ids: np.ndarray, shown: int = 3) -> None:
  """Text ids are compared as text, so '1' and '1.0' are two ids: say so where a column
  holds such a pair, which is more often a spreadsheet's doing than two real items."""
  by_number: dict[float, list[str]] = {}
  for text in ids.tolist():
    try:
      by_number.setdefault(float(text), []).append(text)
    except (TypeError, ValueError):
      continue
  alike = [sorted(v) for v in by_number.values() if len(v) > 1]
  if alike:
    log.warning('%d ids are read as two or more ids that name one number (%s): ids are '
                'text, so these are different items or users; write each one way if they '
                'are the same', len(alike),
                '; '.join(' and '.join(repr(t) for t in a) for a in alike[:shown]))


_READERS = {
    'movielens_csv': read_movielens_csv, 'movielens_dat': read_movielens_dat,
    'movielens_100k': read_movielens_100k, 'netflix': read_netflix,
    'msd': read_msd_triplets, 'delimited': read_delimited,
}


def read_interactions(path: PathLike, fmt: str = 'auto', **kw) -> Interactions:
  """Reads `path` with the reader of `fmt`; 'auto' goes by the file names."""
  path = Path(path)
  if fmt == 'auto':
    if not path.exists():
      raise DataError(f'{path}: not found; expected one of {_EXPECTED}')
    hit = _find(path, None) if path.is_dir() else (_match(path.name), path)
    if hit is None or hit[0] is None:
      raise DataError(f'{path}: no recognisable ratings file; expected '
                      f"{_EXPECTED}, or pass fmt='delimited' with user_col/item_col")
    fmt, path = hit
  if fmt not in _READERS:
    raise DataError(f"{path}: unknown format {fmt!r}; expected one of "
                    f"{['auto', *_READERS]}")
  if kw and fmt != 'delimited':
    raise TypeError(f'format {fmt!r} takes no options, got {sorted(kw)}')
  return _READERS[fmt](path, **kw)


def read_item_titles(path_or_dir: PathLike) -> dict[int, str]:
  """{MovieLens movie id: title} from movies.csv, movies.dat or u.item.

  A folder is searched for those names; returns {} when none is there.
  """
  path = Path(path_or_dir)
  if path.is_dir():
    path = next((path / n for n in ('movies.csv', 'movies.dat', 'u.item')
                 if (path / n).is_file()), path / 'movies.csv')
  if not path.is_file():
    return {}
  name = path.name.lower()
  if name.endswith('.csv'):  # quoted titles hold commas: let csv unquote them
    with open(path, encoding='utf-8-sig', newline='') as f:
      rows, start = list(csv.reader(f))[1:], 2
  elif name.endswith(('.dat', '.item')):  # these two are latin-1
    with open(path, encoding='latin-1') as f:
      sep = '::' if name.endswith('.dat') else '|'
      rows, start = [line.rstrip('\r\n').split(sep) for line in f], 1
  else:
    raise DataError(f'{path}: unknown titles file; expected movies.csv, '
                    'movies.dat or u.item')
  titles = {}
  for lineno, row in enumerate(rows, start):
    if row in ([], ['']):
      continue
    if len(row) < 3 or not row[0].strip().isdigit():
      raise DataError(f'{path}, line {lineno}: expected an id, a title and '
                      f'more fields, got {row!r}')
    titles[int(row[0])] = row[1]
  return titles
