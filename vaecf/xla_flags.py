"""XLA flags the project's entry points set: chosen by measurement, never on `import vaecf`.

XLA reads XLA_FLAGS once, when JAX initialises its first backend, so an entry point
calls `apply()` before anything touches a device. A flag the user already put in
XLA_FLAGS is left as they set it; VAECF_XLA_FLAGS=0 turns all of them off.

The flags and the reason for each (figures in README, "Scale"; measured with
`python -m vaecf.tools.benchmark --shape=ml20m`):
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# XLA:CPU runs dots through YNNPACK by default; for the decoder's [500,600]x[600,20108]
# products oneDNN is faster on the forward and weight gradient and the
# YNNPACK-off (Eigen) path on the input gradient.
CPU_FLAGS: tuple[str, ...] = ()

OPT_OUT = 'VAECF_XLA_FLAGS'
_applied: list[str] = []


def _name(flag: str) -> str:
  return flag.lstrip('-').split('=', 1)[0]


def apply(env=None) -> list[str]:
  """Appends the project's flags to XLA_FLAGS in `env` (os.environ); returns those added."""
  env = os.environ if env is None else env
  if env.get(OPT_OUT, '1').strip().lower() in ('0', 'false', 'no', 'off'):
    return []
  try:
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
      log.warning('xla_flags.apply() after JAX started its backend: the flags would not '
                  'take effect, so none are set')
      return []
  except (ImportError, AttributeError):  # private API: without it, trust the caller
    pass
  current = env.get('XLA_FLAGS', '')
  have = {_name(f) for f in current.split()}
  added = [f for f in CPU_FLAGS if _name(f) not in have]
  if added:
    env['XLA_FLAGS'] = ' '.join([current, *added]).strip()
  _applied[:] = added
  return added


def applied() -> list[str]:
  """The flags `apply()` added in this process."""
  return list(_applied)
