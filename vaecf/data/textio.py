"""The fast core of the readers: delimited text in blocks, ids as integer codes.

numpy's C parser (`np.loadtxt`) reads 32 MiB of lines at a time; only once it
has refused a block does a Python loop run, to name the bad line. Id fields are
read as raw bytes (or int64) and turned into int32 codes block by block
(`Vocabulary`), each distinct id held once: the MSD's 48M rows of 40- and
18-character ids would take ~11 GB as numpy unicode arrays, as codes ~0.4 GB.

It is longer than 300 lines because the block splitting, the vocabulary merge and
the line-exact error reporting depend on each other's block boundaries: split apart,
each piece would need the others' internals.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from vaecf.data.types import DataError

_CHUNK = 1 << 25  # numpy parses 32 MiB of text at a time: bounded memory.
_READ_ERRORS = (OSError, EOFError, zlib.error)
BOM = b'\xef\xbb\xbf'
_TEXT_WIDTH = 64  # first guess at an id's length in bytes; a block with a longer one is re-read


def open_binary(path: Path):
  return gzip.open(path, 'rb') if path.suffix == '.gz' else open(path, 'rb')


def fail(path: Path, lineno: int, why: str) -> DataError:
  """An error quoting line `lineno` (1-based) of `path`."""
  with open_binary(path) as f:
    line = next((s for i, s in enumerate(f, 1) if i == lineno), b'')
  line = line.removeprefix(BOM) if lineno == 1 else line
  text = line.rstrip(b'\r\n').decode('utf-8', 'replace')
  return DataError(f'{path}, line {lineno}: {why}: {text!r}')


def chunks(path: Path) -> Iterator[tuple[int, bytes]]:
  """Yields (lines before the block, block of whole lines without CR or BOM)."""
  try:
    with open_binary(path) as f:
      before = 0
      while block := f.read(_CHUNK):
        if not block.endswith(b'\n'):
          block += f.readline()
        if before == 0:
          # Excel and Notepad start UTF-8 files with a BOM; it is not part of the first id.
          block = block.removeprefix(BOM)
        yield before, block.replace(b'\r', b'')
        before += block.count(b'\n')
  except _READ_ERRORS as e:
    raise DataError(f'{path}: cannot read the file ({e})') from e


def head(path: Path, n: int = 1) -> list[str]:
  """The first `n` lines (BOM dropped); a DataError when the file is empty or unreadable."""
  try:
    with open_binary(path) as f:
      lines = [f.readline().rstrip(b'\r\n') for _ in range(n)]
      if not lines[0] and not f.tell():
        raise DataError(f'{path}: no ratings in the file (it is empty)')
  except _READ_ERRORS as e:
    raise DataError(f'{path}: cannot read the file ({e})') from e
  lines[0] = lines[0].removeprefix(BOM)
  return [line.decode('utf-8', 'replace') for line in lines]


def split_line(line: bytes, sep: bytes, quote: bool) -> list[bytes]:
  """The fields of one line, CSV double quotes removed if `quote`."""
  if not quote:
    return line.split(sep)
  # Only on error paths and for the header: a Python loop is fine here.
  text = line.decode('latin-1')  # latin-1 keeps every byte as it is
  return [f.encode('latin-1')
          for f in next(csv.reader([text], delimiter=sep.decode('latin-1')), [])]


def is_number(tok, dtype: str) -> bool:
  """Whether `tok` is what numpy's dtype `dtype` ('i8', 'f8') demands."""
  try:
    v = int(tok) if dtype == 'i8' else float(tok)
  except (ValueError, OverflowError):
    return False
  return -2**63 <= v < 2**63 if dtype == 'i8' else math.isfinite(v)


def fields_error(fields: list[bytes], columns: list, layout: str) -> str | None:
  """Why a line's fields do not fit `columns` ((name, kind) pairs), if they don't."""
  if len(fields) != len(columns):
    return f'expected {len(columns)} fields {layout}'
  for tok, (name, kind) in zip(fields, columns):
    text = tok.decode('utf-8', 'replace')
    if kind == 'int' and not is_number(tok, 'i8'):
      return f'{name} {text!r} is not an integer'
    if kind == 'float' and not is_number(tok, 'f8'):
      return f'{name} {text!r} is not a finite number'
  return None


def explain(path: Path, before: int, text: bytes,
            why: Callable[[bytes], str | None]) -> DataError:
  """The error for the first line of a rejected block that `why` faults.

  Runs only after numpy refused the block, so a Python loop is fine here.
  """
  for lineno, line in enumerate(text.split(b'\n'), before + 1):
    if line and (reason := why(line)):
      return fail(path, lineno, reason)
  return DataError(f'{path}: cannot parse the lines after line {before}')


def loadtxt(text: bytes, sep: str, dtypes: list[str], quote: bool = False
            ) -> np.ndarray | None:
  """The block as a structured array (fields c0, c1, ...); None if numpy
  refuses it (a wrong field count, a bad number) or a float is not finite."""
  dtype = np.dtype([(f'c{i}', d) for i, d in enumerate(dtypes)])
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error')  # e.g. an integer written as 3.0
      # latin-1 maps every byte to itself, so 'S' fields get the raw (UTF-8) bytes.
      arr = np.loadtxt(io.BytesIO(text), dtype=dtype, delimiter=sep, comments=None,
                       encoding='latin-1', ndmin=1, quotechar='"' if quote else None)
  except (ValueError, OverflowError, Warning):
    return None
  if all(np.isfinite(arr[f'c{i}']).all() for i, d in enumerate(dtypes) if d == 'f8'):
    return arr
  return None


class Vocabulary:
  """The distinct ids of a column as its blocks stream past, each held once.

  `add` numbers ids in order of first sight; `finish` sorts them and says how
  to renumber, so that final codes follow the order of the ids themselves
  (the split orders users by id).
  """

  def __init__(self):
    self._ids = None  # the distinct ids seen so far, sorted
    self._codes = None  # the provisional code of each of them

  def __len__(self) -> int:
    return 0 if self._ids is None else len(self._ids)

  def add(self, ids: np.ndarray) -> np.ndarray:
    """Provisional int32 codes of `ids`."""
    if not len(ids):
      return np.zeros(0, np.int32)
    # Files come grouped (MSD and MovieLens by user, Netflix by movie): each
    # run of equal ids is looked up once.
    run = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    uniq, inv = np.unique(ids[run], return_inverse=True)
    if uniq.dtype.kind == 'S':  # trim numpy's padding, or widen to the widest seen
      width = max(1, int(np.char.str_len(uniq).max()),
                  self._ids.dtype.itemsize if len(self) else 0)
      uniq = uniq.astype(f'S{width}')
      if len(self):
        self._ids = self._ids.astype(uniq.dtype, copy=False)
    codes = self._merge(uniq)
    return np.repeat(codes[inv.ravel()], np.diff(np.append(run, len(ids))))

  def _merge(self, uniq: np.ndarray) -> np.ndarray:
    n = len(self)
    if not n:
      self._ids, self._codes = uniq, np.arange(len(uniq), dtype=np.int32)
      return self._codes
    pos = np.searchsorted(self._ids, uniq)
    hit = pos < n
    hit[hit] = self._ids[pos[hit]] == uniq[hit]
    new = ~hit
    if n + int(new.sum()) >= 2**31:
      raise DataError('more than 2**31 distinct ids in one column')
    codes = np.empty(len(uniq), np.int32)
    codes[hit] = self._codes[pos[hit]]
    codes[new] = np.arange(n, n + int(new.sum()), dtype=np.int32)
    if new.any():
      self._ids = np.insert(self._ids, pos[new], uniq[new])
      self._codes = np.insert(self._codes, pos[new], codes[new])
    return codes

  def finish(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(`codes`, provisional, renumbered in place to follow the sorted ids; the sorted ids)."""
    ids = self._ids if len(self) else np.zeros(0, np.int64)
    rank = np.empty(len(ids), np.int32)
    rank[self._codes if len(self) else []] = np.arange(len(ids), dtype=np.int32)
    _renumber(codes, rank)
    return codes, ids


def _renumber(codes: np.ndarray, new: np.ndarray) -> None:
  """codes = new[codes], in place and in slices: no second full-length array."""
  step = 1 << 22
  for s in range(0, len(codes), step):
    codes[s:s + step] = new[codes[s:s + step]]


class Column:
  """A column filled block by block into one array.

  Joining per-block pieces at the end would hold the column twice, and glibc
  keeps freed pieces of a few MB (below its mmap threshold) in its heap, so
  the process would stay that big afterwards. One array, sized from the
  file's length and grown if need be, avoids both.
  """

  def __init__(self, dtype, capacity: int = 1 << 16):
    self._data = np.empty(capacity, dtype)
    self.n = 0

  def reserve(self, capacity: int) -> None:
    if capacity > len(self._data):
      grown = np.empty(capacity, self._data.dtype)
      grown[:self.n] = self._data[:self.n]
      self._data = grown

  def append(self, values: np.ndarray) -> None:
    end = self.n + len(values)
    if end > len(self._data):
      self.reserve(max(end, len(self._data) * 3 // 2))
    self._data[self.n:end] = values  # casts, e.g. float64 values to float32
    self.n = end

  def array(self) -> np.ndarray:
    """The filled part; the spare capacity goes back to the system."""
    data, self._data = self._data, None
    data.resize(self.n, refcheck=False)  # realloc: shrinks in place, no copy
    return data


def expected_rows(paths: list[Path], block: bytes, rows: int) -> int:
  """Rows in all of `paths`, extrapolated from a first block of `rows` rows
  (a little over, so that the columns rarely grow)."""
  size = sum(p.stat().st_size * (4 if p.suffix == '.gz' else 1) for p in paths)
  return int(size / max(1, len(block)) * rows * 1.02) + 1024


def recode(codes: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(codes, ids) with `ids` sorted and distinct again after a change to them
  (ids made equal are merged). Renumbers `codes` in place."""
  if len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1])):
    return codes, ids
  uniq, inv = np.unique(ids, return_inverse=True)
  _renumber(codes, inv.ravel().astype(np.int32))
  return codes, uniq


def decode(ids: np.ndarray, on_error: Callable[[bytes], DataError]) -> np.ndarray:
  """Sorted UTF-8 byte ids as a sorted unicode array (byte order is code point
  order in UTF-8, so no renumbering); `on_error(bad id)` for invalid UTF-8."""
  if not len(ids) or ids.view(np.uint8).max() < 128:
    return ids.astype('U')  # the common, all-ASCII case: numpy's C cast
  try:
    return np.char.decode(ids, 'utf-8')
  except UnicodeDecodeError:
    raise on_error(next(b for b in ids.tolist() if not _utf8(b))) from None


def _utf8(b: bytes) -> bool:
  try:
    b.decode('utf-8')
    return True
  except UnicodeDecodeError:
    return False


def scan(path: Path, sep: bytes, columns: list[tuple[str, str]], *,
         header: bool = False, quote: bool = False) -> list:
  """The columns of a file of `sep`-separated lines (line 1 a header if asked).

  `columns` holds a (name, kind) pair for every field of a line; kind 'text'
  (an id kept as text) and 'int' (an integer id) give (int32 codes, sorted
  ids), 'float' a float32 array of finite values and 'skip' nothing. With
  `quote` (for a one-character `sep`), CSV double quotes around a field are
  removed and a separator inside them is part of the field.
  """
  one = '\x1f' if len(sep) > 1 else sep.decode()  # numpy takes a 1-char separator
  layout = f"({', '.join(n for n, _ in columns)}) separated by {sep.decode()!r}"
  widths = {i: _TEXT_WIDTH for i, (_, k) in enumerate(columns) if k == 'text'}
  vocab = {i: Vocabulary() for i, (_, k) in enumerate(columns) if k in ('text', 'int')}
  out = {i: Column(np.int32 if i in vocab else np.float32)
         for i, (_, k) in enumerate(columns) if k != 'skip'}
  for before, text in chunks(path):
    if header and before == 0:
      text, before = text.partition(b'\n')[2], 1
    if one != sep.decode():
      text = text.replace(sep, one.encode())
    if not text or text.isspace():
      continue
    while True:
      # Unused fields are read as 'S1' (numpy truncates): no objects made.
      dtypes = [{'int': 'i8', 'float': 'f8', 'text': f'S{widths.get(i)}'}.get(k, 'S1')
                for i, (_, k) in enumerate(columns)]
      if (arr := loadtxt(text, one, dtypes, quote)) is None:
        raise explain(path, before, text, lambda line: fields_error(
            split_line(line, one.encode(), quote), columns, layout))
      # numpy cuts a longer text silently: a field filling its width may have been cut.
      cut = [i for i in widths if _full(arr[f'c{i}'], widths[i])]
      if not cut:
        break
      for i in cut:
        widths[i] *= 4
    for i, col in out.items():
      if not col.n:
        col.reserve(expected_rows([path], text, len(arr)))
      x = arr[f'c{i}']
      col.append(vocab[i].add(x) if i in vocab else x)
    del arr
  if not next(iter(out.values())).n:
    rest = ' apart from its header' if header else ''
    raise DataError(f'{path}: no ratings in the file (it is empty{rest})')
  result = []
  for i, col in out.items():
    if i not in vocab:
      result.append(col.array())
      continue
    codes, ids = vocab[i].finish(col.array())
    if columns[i][1] == 'text':
      name = columns[i][0]
      ids = decode(ids, lambda bad: _bad_utf8(path, sep, quote, header, i, name, bad))
    result.append((codes, ids))
  return result


def _full(col: np.ndarray, width: int) -> bool:
  return bool(len(col)) and bool(
      np.ascontiguousarray(col).view(np.uint8).reshape(-1, width)[:, -1].any())


def _bad_utf8(path: Path, sep: bytes, quote: bool, header: bool, field: int,
              name: str, bad: bytes) -> DataError:
  """Names the first line whose field `field` is the invalid UTF-8 id `bad`."""
  with open_binary(path) as f:
    for lineno, line in enumerate(f, 1):
      if header and lineno == 1:
        continue
      fields = split_line(line.rstrip(b'\r\n').removeprefix(BOM), sep, quote)
      if len(fields) > field and fields[field] == bad:
        return fail(path, lineno, f'{name} {bad.decode("utf-8", "replace")!r} is not valid UTF-8')
  return DataError(f'{path}: {name} {bad!r} is not valid UTF-8')


def format_lines(columns: list[np.ndarray], sep: bytes = b',') -> bytes:
  """The rows of byte-string columns ('S' arrays) as `sep`-separated lines.

  Vectorised: the columns side by side in one byte matrix whose padding (NUL)
  is then dropped, so no Python object per row. Ids must not contain NUL.
  """
  n = len(columns[0])
  if not n:
    return b''
  parts = []
  for k, col in enumerate(columns):
    col = np.ascontiguousarray(col)
    parts.append(col.view(np.uint8).reshape(n, col.dtype.itemsize))
    end = b'\n' if k == len(columns) - 1 else sep
    parts.append(np.broadcast_to(np.frombuffer(end, np.uint8), (n, len(end))))
  mat = np.concatenate(parts, axis=1)
  return mat[mat != 0].tobytes()


def as_bytes(ids: np.ndarray) -> np.ndarray:
  """Ids (integers or text) as UTF-8 byte strings ('S' array), for `format_lines`."""
  if ids.dtype.kind == 'S':
    return ids
  if ids.dtype.kind == 'U':
    try:
      return ids.astype('S')  # all ASCII: numpy's C cast
    except UnicodeEncodeError:
      return np.char.encode(ids, 'utf-8')
  return ids.astype('S')
