"""Shared fixtures. Tests see 4 fake CPU devices so data-parallel code is exercised."""
import os

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

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
