"""XLA flags the project's entry points set: chosen by measurement, never on `import vaecf`.

XLA reads XLA_FLAGS once, when JAX initialises its first backend, so an entry point
calls `apply()` before anything touches a device. A flag the user already put in
XLA_FLAGS is left as they set it. VAECF_XLA_FLAGS picks the set: unset or 'default'
is CPU_FLAGS, '0' none, or the name of one of PRESETS (to measure it:
`VAECF_XLA_FLAGS=onednn python -m vaecf.tools.benchmark --shape=ml20m`).
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

_NO_YNN = '--xla_cpu_experimental_ynn_fusion_type='
PRESETS: dict[str, tuple[str, ...]] = {
    # Dots (and the other fusions YNNPACK takes) back on XLA's Eigen path.
    'eigen': (_NO_YNN,),
    # Dots through oneDNN. XLA:CPU only rewrites them with YNNPACK off.
    'onednn': (_NO_YNN, '--xla_cpu_use_onednn=true',
               '--xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_DOT'),
}
# Empty: on the 2-core AMD EPYC, neither preset beat XLA's default (YNNPACK) on the
# whole ML-20M step by more than the noise of a shared machine (onednn's median step
# 5-12% faster, its best step 10% slower or 12% faster in two side-by-side runs).
CPU_FLAGS: tuple[str, ...] = ()

OPT_OUT = 'VAECF_XLA_FLAGS'
_applied: list[str] = []


def _name(flag: str) -> str:
  return flag.lstrip('-').split('=', 1)[0]


def apply(env=None) -> list[str]:
  """Appends the project's flags to XLA_FLAGS in `env` (os.environ); returns those added."""
  env = os.environ if env is None else env
  choice = env.get(OPT_OUT, 'default').strip().lower()
  if choice in ('0', 'false', 'no', 'off', 'none'):
    return []
  if choice in ('', '1', 'default'):
    wanted = CPU_FLAGS
  elif choice in PRESETS:
    wanted = PRESETS[choice]
  else:
    raise ValueError(f'{OPT_OUT}={choice!r}: use 0, default or one of {sorted(PRESETS)}')
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
  added = [f for f in wanted if _name(f) not in have]
  if added:
    env['XLA_FLAGS'] = ' '.join([current, *added]).strip()
  _applied[:] = added
  return added


def applied() -> list[str]:
  """The flags `apply()` added in this process."""
  return list(_applied)
