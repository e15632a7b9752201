"""Small pieces several modules share: atomic file writes, shape buckets, type aliases.

Kept free of jax and of every other vaecf module, so anything may import it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

class VaecfError(Exception):
  """Base of the errors that name a problem in the user's input, config, data or workdir.

  Commands print these (and OSErrors such as a full disk) as one `error: ...` line
  instead of a traceback; `--verbosity` shows the traceback too.
  """


# A pytree of arrays: the models' parameters are nested dicts and lists of them.
Params = Any
# score_fn(csr [B, I] of fold-in rows) -> scores [B, I]: what the evaluator and the
# recommender call, whatever model (or baseline, or export) is behind it.
ScoreFn = Callable[[Any], Any]


def atomic_write(path: str | Path, data: str | bytes | Callable) -> Path:
  """Writes `data` (text, bytes, or a function of a binary file) via a temp file.

  A kill mid-write leaves the old file (or none), never half a file; the temp
  file sits beside the target so the final rename stays on one file system.
  """
  path = Path(path)
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'wb') as f:
    if callable(data):
      data(f)
    else:
      f.write(data.encode() if isinstance(data, str) else data)
  os.replace(tmp, path)
  return path


def next_power_of_two(n: int, minimum: int = 1) -> int:
  """The smallest power of two >= max(n, minimum): few distinct shapes, few compiles."""
  n = max(int(n), int(minimum), 1)
  return 1 << (n - 1).bit_length()
