"""glibc malloc settings the entry points set: large buffers reused, not re-faulted.

XLA:CPU allocates every large temporary of a step (the first layer's gathered rows,
the [B, I] logits and their gradient, the dense weight gradients) with malloc. glibc
serves a request over 32 MB with a fresh mmap and returns it with munmap on free, so
each step touches those pages for the first time again: one page fault per 4 KiB. On
the 2-core EPYC that cost was a quarter of the ML-20M step (gathering 29k rows of 600
floats took 26 ms, 6-8 ms once the pages were reused; the step went from 1,351-1,393 to
1,732-1,864 users/s). With mmap off, one arena and a high trim threshold, freed blocks
stay in the process's heap and the next step reuses them.

The cost is that the process keeps its high-water mark of memory until it exits (up to
TRIM_THRESHOLD of free heap), which a training process has anyway. Like xla_flags, it is
set by entry points only, never on `import vaecf`: `apply()` before anything starts
JAX's threads (arena settings reach only arenas made later). VAECF_MALLOC=0 turns it
off; a GLIBC_TUNABLES that sets any glibc.malloc tunable is left to rule.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

OPT_OUT = 'VAECF_MALLOC'
# mallopt parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# Above a step's working set at the paper's shapes (ML-20M's is about 0.5 GB).
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int
SETTINGS = {'M_ARENA_MAX': 1, 'M_MMAP_MAX': 0, 'M_TRIM_THRESHOLD': TRIM_THRESHOLD}
_CODES = {'M_ARENA_MAX': _M_ARENA_MAX, 'M_MMAP_MAX': _M_MMAP_MAX,
          'M_TRIM_THRESHOLD': _M_TRIM_THRESHOLD}
_applied: dict[str, int] = {}


def _skip_reason(env) -> str | None:
  choice = env.get(OPT_OUT, '1').strip().lower()
  if choice in ('0', 'false', 'no', 'off', 'none'):
    return f'{OPT_OUT}={choice}'
  if choice not in ('', '1', 'true', 'yes', 'on', 'default'):
    raise ValueError(f'{OPT_OUT}={choice!r}: use 1 (default) or 0')
  if 'glibc.malloc' in env.get('GLIBC_TUNABLES', ''):
    return 'GLIBC_TUNABLES sets malloc tunables'
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return 'not glibc'
  return None


def apply(env=None, _libc=None) -> dict[str, int]:
  """Sets SETTINGS with mallopt unless opted out; returns what it set."""
  env = os.environ if env is None else env
  reason = _skip_reason(env)
  if reason:
    log.info('malloc settings left alone: %s', reason)
    _applied.clear()
    return {}
  libc = _libc or ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
  done = {}
  for name, value in SETTINGS.items():
    if libc.mallopt(_CODES[name], value) == 1:  # mallopt returns 1 on success
      done[name] = value
    else:
      log.warning('mallopt(%s, %d) refused', name, value)
  _applied.clear()
  _applied.update(done)
  return dict(done)


def applied() -> dict[str, int]:
  """The settings `apply()` made in this process."""
  return dict(_applied)
