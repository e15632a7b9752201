"""On-disk cache of a processed split: one .npz of CSR parts and id maps.

The file name is a hash of the data settings and of the input files' paths,
sizes and modification times, so editing the input or a setting re-runs the
preprocessing while a plain second run loads in well under a second.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from vaecf.common import atomic_write
from vaecf.data.types import Split

FORMAT_VERSION = 2  # bump when the split or the file layout changes (2: readers keep ids exact)
_PARTS = ('train', 'val_tr', 'val_te', 'test_tr', 'test_te')
_IDS = ('item_ids', 'train_user_ids', 'val_user_ids', 'test_user_ids')


def default_cache_dir() -> Path:
  return Path(os.environ.get('VAECF_CACHE', Path.home() / '.cache' / 'vaecf'))


def fingerprint(path: Path) -> list:
  path = Path(path)
  files = sorted(p for p in path.rglob('*') if p.is_file()) if path.is_dir() else [path]
  out = []
  for f in files:
    st = f.stat()
    out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
  return out


def cache_key(settings: dict, path: Path) -> str:
  blob = json.dumps({'v': FORMAT_VERSION, 'settings': settings, 'input': fingerprint(path)},
                    sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:20]


def save(file: Path, split: Split, info: dict) -> None:
  arrays = {}
  for name in _PARTS:
    m = getattr(split, name)
    arrays[f'{name}_indptr'] = m.indptr
    arrays[f'{name}_indices'] = m.indices
    arrays[f'{name}_shape'] = np.asarray(m.shape)
  for name in _IDS:
    arrays[name] = getattr(split, name)
  arrays['info'] = np.asarray(json.dumps(info))
  file.parent.mkdir(parents=True, exist_ok=True)
  atomic_write(file, lambda f: np.savez(f, **arrays))  # a kill never leaves half a cache file


def load(file: Path) -> tuple[Split, dict]:
  with np.load(file, allow_pickle=False) as z:
    parts = {}
    for name in _PARTS:
      indptr, indices = z[f'{name}_indptr'], z[f'{name}_indices']
      parts[name] = sp.csr_matrix(
          (np.ones(len(indices), np.float32), indices, indptr), shape=tuple(z[f'{name}_shape']))
    ids = {name: z[name] for name in _IDS}
    info = json.loads(str(z['info']))
  return Split(**parts, **ids), info


def split_summary(split: Split) -> dict:
  """Users, items, interactions and sparsity of each part."""
  out = {}
  for name in _PARTS:
    m = getattr(split, name)
    out[name] = {'users': int(m.shape[0]), 'items': int(m.shape[1]), 'interactions': int(m.nnz),
                 'density': float(m.nnz / max(1, m.shape[0] * m.shape[1]))}
  return out


