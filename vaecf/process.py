"""What an entry point sets in its own process before JAX starts, and nothing else does.

Two sets, each measured, listed in the benchmark's JSON and with its own off switch:
XLA flags (vaecf.xla_flags, VAECF_XLA_FLAGS) and glibc malloc settings
(vaecf.host_malloc, VAECF_MALLOC). Importing vaecf sets neither.
"""
from __future__ import annotations

from vaecf import host_malloc, xla_flags


def prepare() -> dict:
  """Call first in an entry point (before flag parsing is fine, before any device use)."""
  xla_flags.apply()
  host_malloc.apply()
  return settings()


def settings() -> dict:
  """What this process's `prepare()` set (the benchmark's JSON carries it)."""
  return {'vaecf_xla_flags': xla_flags.applied(), 'malloc': host_malloc.applied()}
