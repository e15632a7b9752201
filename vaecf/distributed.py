"""Devices: the one-axis data mesh, its shardings, and multi-host start-up.

Every jitted step and the evaluator place arrays through these, so the same code
runs on one CPU, fake CPU devices, a GPU, a TPU slice or several hosts (the mesh
spans every process's devices).
"""
from __future__ import annotations

import jax

AXIS = 'data'


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else list(devices)
  # Auto axes: XLA propagates shardings through the evaluator's scatters and top-k.
  return jax.make_mesh((len(devices),), (AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.P(AXIS))


def replicated(mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.P())


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
