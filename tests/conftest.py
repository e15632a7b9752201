"""Shared fixtures. Tests see 4 fake CPU devices so data-parallel code is exercised."""
import os

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# One XLA compilation cache for the session and the runs it starts in subprocesses: most
# of the suite's time is compiling the same small models again, test after test. Entries
# are keyed by the whole program and the compile options, so a hit is the same binary.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import atexit
  import shutil
  import tempfile
  _XLA_CACHE = tempfile.mkdtemp(prefix='vaecf-tests-xla-cache-')
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _XLA_CACHE
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

# The entry points' malloc settings (vaecf.host_malloc) for the test process as well:
# tests then run what users run, and the larger ones skip re-faulting fresh buffers.
from vaecf import host_malloc  # noqa: E402

host_malloc.apply()

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'


@pytest.fixture(scope='session')
def shared_data() -> Path:
  """The real datasets laid beside the checkout (../shared/data); skip if absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'real datasets not found at {SHARED_DATA} (../shared is laid only in '
                'the team workspace and CI)')
  return SHARED_DATA
