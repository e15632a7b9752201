"""Readers for the raw rating files of MovieLens, Netflix Prize and the MSD.

Every reader returns `Interactions` with the ORIGINAL ids, rows in file order
and float32 values. numpy's C parser (`np.loadtxt`) reads large blocks of
lines; only once it has refused a block does a Python loop run, to name the
bad line.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import re
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterator, Union

import numpy as np

from vaecf.data.types import DataError, Interactions

PathLike = Union[str, Path]
_CHUNK = 1 << 25  # numpy parses 32 MiB of text at a time: bounded memory.
_READ_ERRORS = (OSError, EOFError, zlib.error)
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


def _open(path: Path):
  return gzip.open(path, 'rb') if path.suffix == '.gz' else open(path, 'rb')


def _fail(path: Path, lineno: int, why: str) -> DataError:
  """An error quoting line `lineno` (1-based) of `path`."""
  with _open(path) as f:
    line = next((s for i, s in enumerate(f, 1) if i == lineno), b'')
  text = line.rstrip(b'\r\n').decode('utf-8', 'replace')
  return DataError(f'{path}, line {lineno}: {why}: {text!r}')


def _chunks(path: Path) -> Iterator[tuple[int, bytes]]:
  """Yields (lines before the block, block of whole lines without CR)."""
  try:
    with _open(path) as f:
      before = 0
      while block := f.read(_CHUNK):
        if not block.endswith(b'\n'):
          block += f.readline()
        yield before, block.replace(b'\r', b'')
        before += block.count(b'\n')
  except _READ_ERRORS as e:
    raise DataError(f'{path}: cannot read the file ({e})') from e


def _number(tok, dtype: str) -> bool:
  """Whether `tok` is what numpy's dtype `dtype` ('i8', 'f8') demands."""
  try:
    v = int(tok) if dtype == 'i8' else float(tok)
  except (ValueError, OverflowError):
    return False
  return -2**63 <= v < 2**63 if dtype == 'i8' else math.isfinite(v)


def _fields_error(fields: list[bytes], columns: list, layout: str) -> str | None:
  """Why a line's fields do not fit `columns` ((name, dtype) pairs), if they don't."""
  if len(fields) != len(columns):
    return f'expected {len(columns)} fields {layout}'
  for tok, (name, dtype) in zip(fields, columns):
    text = tok.decode('utf-8', 'replace')
    if dtype == 'O' and text.encode() != tok:
      return f'{name} {text!r} is not valid UTF-8'
    if dtype in ('i8', 'f8') and not _number(tok, dtype):
      return f"{name} {text!r} is not {'an integer' if dtype == 'i8' else 'a finite number'}"
  return None


def _explain(path: Path, before: int, text: bytes,
             why: Callable[[bytes], str | None]) -> DataError:
  """The error for the first line of a rejected block that `why` faults.

  Runs only after numpy refused the block, so a Python loop is fine here.
  """
  for lineno, line in enumerate(text.split(b'\n'), before + 1):
    if line and (reason := why(line)):
      return _fail(path, lineno, reason)
  return DataError(f'{path}: cannot parse the lines after line {before}')


def _loadtxt(text: bytes, sep: str, dtypes: list[str]) -> np.ndarray | None:
  """The block as a structured array (fields c0, c1, ...); None if numpy
  refuses it (a wrong field count, a bad number) or a float is not finite."""
  dtype = np.dtype([(f'c{i}', d) for i, d in enumerate(dtypes)])
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error')  # e.g. an integer written as 3.0
      arr = np.loadtxt(io.BytesIO(text), dtype=dtype, delimiter=sep, comments=None,
                       encoding='utf-8', ndmin=1)
  except (ValueError, OverflowError, Warning):
    return None
  if all(np.isfinite(arr[f'c{i}']).all() for i, d in enumerate(dtypes) if d == 'f8'):
    return arr
  return None


def _join(parts: list, path: Path, header: bool) -> list[np.ndarray]:
  """Concatenates the columns of the blocks; no row at all is an error."""
  if not sum(len(p[0]) for p in parts):
    rest = ' apart from its header' if header else ''
    raise DataError(f'{path}: no ratings in the file (it is empty{rest})')
  return [np.concatenate(p) for p in zip(*parts)]


def _scan(path: Path, sep: bytes, columns: list, keep: list[int], *,
          header: bool = False) -> list[np.ndarray]:
  """Columns `keep` of a file of `sep`-separated lines (line 1 a header if
  asked); `columns` holds a (name, dtype) pair for every field of a line."""
  one = '\x1f' if len(sep) > 1 else sep.decode()  # numpy takes a 1-char separator
  layout = f"({', '.join(n for n, _ in columns)}) separated by {sep.decode()!r}"
  dtypes = [d for _, d in columns]
  parts = []
  for before, text in _chunks(path):
    if header and before == 0:
      text, before = text.partition(b'\n')[2], 1
    if one != sep.decode():
      text = text.replace(sep, one.encode())
    if not text or text.isspace():
      continue
    if (arr := _loadtxt(text, one, dtypes)) is None:
      raise _explain(path, before, text, lambda line: _fields_error(
          line.split(one.encode()), columns, layout))
    # Own contiguous copies let the block's array go; str objects -> unicode.
    parts.append([arr[f'c{i}'].astype({'i8': np.int64, 'f8': np.float32}.get(
        dtypes[i], str)) for i in keep])
  return _join(parts, path, header)


def _head(path: Path, n: int = 1) -> list[str]:
  """The first `n` lines; a DataError when the file is empty or unreadable."""
  try:
    with _open(path) as f:
      lines = [f.readline().rstrip(b'\r\n').decode('utf-8', 'replace')
               for _ in range(n)]
      if not lines[0] and not f.tell():
        raise DataError(f'{path}: no ratings in the file (it is empty)')
  except _READ_ERRORS as e:
    raise DataError(f'{path}: cannot read the file ({e})') from e
  return lines


def _ratings(path: Path, sep: bytes, names: list[str], header=False):
  """Interactions from int user, int item and float rating in columns 0-2."""
  columns = list(zip(names, ['i8', 'i8', 'f8', 'f8']))
  return Interactions(*_scan(path, sep, columns, [0, 1, 2], header=header),
                      str(path))


def read_movielens_csv(path: PathLike) -> Interactions:
  """MovieLens 20M / latest `ratings.csv` (header userId,movieId,rating,...)."""
  path = _locate(path, 'movielens_csv')
  head = _head(path)[0].split(',')
  if head[:3] != ['userId', 'movieId', 'rating'] or len(head) > 4:
    raise _fail(path, 1, "expected the header 'userId,movieId,rating,timestamp'")
  return _ratings(path, b',', head, header=True)


def read_movielens_dat(path: PathLike) -> Interactions:
  """MovieLens 1M `ratings.dat[.gz]`: UserID::MovieID::Rating[::Timestamp]."""
  path = _locate(path, 'movielens_dat')
  ncols = _head(path)[0].count('::') + 1
  if ncols not in (3, 4):
    raise _fail(path, 1, 'expected UserID::MovieID::Rating[::Timestamp]')
  return _ratings(path, b'::', ['UserID', 'MovieID', 'Rating', 'Timestamp'][:ncols])


def read_movielens_100k(path: PathLike) -> Interactions:
  """MovieLens 100K `u.data`: tab-separated user, item, rating, timestamp."""
  path = _locate(path, 'movielens_100k')
  return _ratings(path, b'\t', ['user id', 'item id', 'rating', 'timestamp'])


def read_msd_triplets(path: PathLike) -> Interactions:
  """Taste Profile `train_triplets.txt`: user, song, play count (tab)."""
  path = _locate(path, 'msd')
  columns = [('user', 'O'), ('song', 'O'), ('play count', 'f8')]
  return Interactions(*_scan(path, b'\t', columns, [0, 1, 2]), str(path))


_NETFLIX_ROW = [('CustomerID', 'i8'), ('Rating', 'f8'), ('Date', 'O')]


def _netflix_error(path: Path, before: int, text: bytes,
                   movie: int | bytes | None) -> DataError:
  """Names the first bad line of a Netflix block numpy refused."""
  def why(line: bytes) -> str | None:
    nonlocal movie
    if line.endswith(b':'):
      movie = line[:-1]
      return _fields_error([movie], [('MovieID', 'i8')], '')
    if line.count(b',') != 2:
      return "expected 'MovieID:' or 'CustomerID,Rating,Date'"
    if movie is None:
      return "rating before any 'MovieID:' line"
    return _fields_error(line.split(b','), _NETFLIX_ROW, '')
  return _explain(path, before, text, why)


def _netflix_file(path: Path) -> list[np.ndarray]:
  """users, items, ratings of one combined_data_*.txt or mv_*.txt file."""
  movie, parts = None, []
  for before, text in _chunks(path):
    if not text or text.isspace():
      continue
    text += b'' if text.endswith(b'\n') else b'\n'
    # 'MovieID:' lines become rows 'MovieID,0,:' so that one numpy call reads
    # both kinds of line, and the date ':' tells them apart. (A rating row
    # that ends in ':' gets 5 fields and fails; 'S2' keeps ':x' apart.)
    arr = _loadtxt(text.replace(b':\n', b',0,:\n'), ',', ['i8', 'f8', 'S2'])
    head = None if arr is None else arr['c2'] == b':'
    if head is None or movie is None and not head[0]:
      raise _netflix_error(path, before, text, movie)
    # A rating belongs to the nearest 'MovieID:' line above it, which may lie
    # in an earlier block (then `movie`).
    owner = np.maximum.accumulate(np.where(head, np.arange(len(head)), -1))[~head]
    ids = arr['c0']
    items = np.where(owner >= 0, ids[np.maximum(owner, 0)], movie or 0)
    movie = int(ids[head][-1]) if head.any() else movie
    parts.append([ids[~head], items, arr['c1'][~head].astype(np.float32)])
  return _join(parts, path, header=False)


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
  parts = [_netflix_file(f) for f in files]
  cols = parts[0] if len(parts) == 1 else map(np.concatenate, zip(*parts))
  return Interactions(*cols, str(path))


def read_delimited(path: PathLike, *, user_col: int | str, item_col: int | str,
                   value_col: int | str | None = None, delimiter: str = ',',
                   header: Union[bool, str] = 'infer') -> Interactions:
  """Any delimited file; columns by header name or 0-based number.

  Ids are int64 when every id is an integer, else strings; without
  `value_col` every value is 1.0. `header='infer'` assumes a header when
  columns are named, or when line 1 holds no number but line 2 does.
  """
  path = _locate(path, 'delimited')
  first = _head(path, 2)
  names = [n.strip().strip('"') for n in first[0].split(delimiter)]
  wanted = [c for c in (user_col, item_col, value_col) if c is not None]
  if header == 'infer':
    header = any(isinstance(c, str) for c in wanted) or (
        not any(_number(n, 'f8') for n in names)
        and any(_number(n, 'f8') for n in first[1].split(delimiter)))
  index = []
  for c in wanted:
    if isinstance(c, str):
      if not header or c not in names:
        raise DataError(f'{path}: no column named {c!r} in the header '
                        f'{names if header else "(the file has none)"}')
      c = names.index(c)
    if not 0 <= c < len(names):
      raise DataError(f'{path}: no column {c}: line 1 has {len(names)} fields')
    index.append(c)
  label = [n if header else f'column {k}' for k, n in enumerate(names)]
  for ids in ('i8', 'O'):  # int64 ids, unless some id is not an integer
    # Unused fields are read as 'S1' (numpy truncates): no objects made.
    dtypes = ['S1'] * len(names)
    for c, dtype in zip(index, (ids, ids, 'f8')):
      dtypes[c] = dtype
    try:
      out = _scan(path, delimiter.encode(), list(zip(label, dtypes)), index,
                  header=bool(header))
      break
    except DataError:
      if ids == 'O':
        raise
  for i in (0, 1):  # after the text pass: a column of integers is still int64
    try:
      out[i] = out[i].astype(np.int64)
    except (ValueError, OverflowError):
      pass
  values = out[2] if value_col is not None else np.ones(len(out[0]), np.float32)
  return Interactions(out[0], out[1], values, str(path))


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
    with open(path, encoding='utf-8', newline='') as f:
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
