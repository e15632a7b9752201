"""Downloads and unpacks the MovieLens zips from GroupLens into a cache folder.

MovieLens 100K/1M/20M may not be redistributed, so a user fetches them from
GroupLens; offline, the error says which URL to fetch and where to unzip it.
"""
from __future__ import annotations

import hashlib
import http.client
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Union

from vaecf.data.types import DataError

URL = 'https://files.grouplens.org/datasets/movielens/{name}.zip'

# (bytes, sha256) of each zip. GroupLens publishes only MD5s; these sha256s are
# the ones recorded by tensorflow/datasets (url_checksums/movielens.txt). None
# would mean "unknown": then only the size (if known) and the zip's own CRCs
# are checked.
CHECKSUMS: dict[str, tuple[int | None, str | None]] = {
    'ml-100k': (4924029,
                '50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229'),
    'ml-1m': (5917549,
              'a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20'),
    'ml-20m': (198702078,
               '96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3'),
    # "latest" is regenerated from time to time; this is the 2018-09 release.
    'ml-latest-small': (978202,
                        '696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436'),
}

# Network failures that mean "offline or the server is unreachable".
_NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError,
                   http.client.HTTPException)


def _by_hand(url: str, cache_dir: Path, name: str) -> str:
  return (f'download {url} yourself and unzip it into {cache_dir} so that the '
          f'folder {cache_dir / name} exists')


def _download(url: str, dest: Path, urlopen: Callable, timeout: float) -> str:
  """Streams `url` into `dest`; returns the sha256 of what was written."""
  digest = hashlib.sha256()
  with urlopen(url, timeout=timeout) as response, open(dest, 'wb') as f:
    while block := response.read(1 << 20):
      f.write(block)
      digest.update(block)
  return digest.hexdigest()


def _unzip(archive: Path, cache_dir: Path, name: str, url: str) -> Path:
  """Extracts `archive` (which must hold `name`/) and moves `name`/ in place."""
  with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f'.{name}-') as tmp:
    try:
      with zipfile.ZipFile(archive) as z:
        if (bad := z.testzip()) is not None:
          raise DataError(f'{url}: member {bad} of the zip is corrupt; '
                          f'{_by_hand(url, cache_dir, name)}')
        for member in z.namelist():
          # Refuse paths that would land outside the cache folder.
          if member.startswith(('/', '\\')) or '..' in Path(member).parts:
            raise DataError(f'{url}: unsafe path {member!r} in the zip')
        z.extractall(tmp)
    except zipfile.BadZipFile as e:
      raise DataError(f'{url}: the download is not a valid zip ({e}); '
                      f'{_by_hand(url, cache_dir, name)}') from e
    if not (Path(tmp) / name).is_dir():
      raise DataError(f'{url}: the zip has no folder {name}/; '
                      f'{_by_hand(url, cache_dir, name)}')
    shutil.move(str(Path(tmp) / name), cache_dir / name)
  return cache_dir / name


def fetch_movielens(name: str, cache_dir: Union[str, Path], *,
                    urlopen: Callable | None = None,
                    timeout: float = 60.0) -> Path:
  """Returns `cache_dir/name`, downloading and unzipping it first if absent.

  `name` is one of CHECKSUMS; `urlopen` (default urllib's) is for tests.
  """
  if name not in CHECKSUMS:
    raise DataError(f'unknown MovieLens dataset {name!r}; expected one of '
                    f'{sorted(CHECKSUMS)}')
  cache_dir = Path(cache_dir).expanduser().resolve()
  target = cache_dir / name
  if target.is_dir():
    return target
  url = URL.format(name=name)
  cache_dir.mkdir(parents=True, exist_ok=True)
  archive = cache_dir / f'{name}.zip.part'
  try:
    try:
      sha = _download(url, archive, urlopen or urllib.request.urlopen, timeout)
    except _NETWORK_ERRORS as e:
      reason = getattr(e, 'reason', e)
      raise DataError(f'cannot download {url} ({reason}); '
                      f'{_by_hand(url, cache_dir, name)}') from e
    size, want = CHECKSUMS[name]
    got = archive.stat().st_size
    if (size is not None and got != size) or (want is not None and sha != want):
      raise DataError(
          f'{url}: the download does not match the known zip (got {got} bytes, '
          f'sha256 {sha}; expected {size} bytes, sha256 {want}); '
          f'{_by_hand(url, cache_dir, name)}')
    return _unzip(archive, cache_dir, name, url)
  finally:
    archive.unlink(missing_ok=True)
