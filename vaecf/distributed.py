"""Multi-host start-up through JAX's own distributed runtime."""
from __future__ import annotations

import jax


def maybe_initialize(config) -> None:
  """Calls jax.distributed.initialize when config.distributed.initialize is set.

  With an empty coordinator address JAX detects the cluster (SLURM, TPU pods,
  Open MPI); otherwise address, process count and id come from the config.
  """
  d = config.distributed
  if not d.initialize:
    return
  kw = {}
  if d.coordinator_address:
    kw = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
              process_id=d.process_id)
  jax.distributed.initialize(**kw)


def describe() -> str:
  devs = jax.devices()
  return (f'{len(devs)} x {devs[0].platform} ({devs[0].device_kind}) over '
          f'{jax.process_count()} process(es); this is process {jax.process_index()}')
