"""Orbax checkpoints of a run: the latest (to resume) and the best by validation.

Each checkpoint holds the train state and a small JSON record (epoch, best so
far), so a resumed run knows everything without re-reading logs. The best is by
`config.eval.select`; its value is recorded under `best_key(select)` ('val_ndcg@100'
by default, the key of every run made before the metric could be chosen).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from vaecf.common import VaecfError
from vaecf.distributed import replicated


# config.eval.select's default, and what every record made before it was a setting chose by.
DEFAULT_SELECT = 'ndcg@100'


def best_key(select: str) -> str:
  """The record, row and results key of the validation metric `select` ('ndcg@100')."""
  return f'val_{select}'


def recorded_select(record: dict) -> str:
  """The metric a results, sweep or tune record chose by (its 'select'; older ones have
  none and chose by DEFAULT_SELECT)."""
  return record.get('select', DEFAULT_SELECT)


BEST_METRIC = best_key(DEFAULT_SELECT)


class CheckpointError(VaecfError, RuntimeError):
  """A checkpoint that exists but cannot be read; nothing on disk is touched."""


class KeepRecordedBest(pp.PreservationPolicy):
  """Keeps the step that the newest checkpoint records as the best so far.

  The trainer decides (the first epoch reaching the top validation metric wins);
  ranking by the metric here instead could keep another epoch of a tie and
  delete the one the trainer will restore.
  """

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    best = None
    for c in sorted(checkpoints, key=lambda c: c.step):
      if c.metrics and 'best_epoch' in c.metrics:
        best = int(c.metrics['best_epoch'])
    return [c.step == best for c in checkpoints]


def manager(workdir: str | Path, keep_latest: int = 1) -> ocp.CheckpointManager:
  policy = pp.AnyPreservationPolicy([pp.LatestN(n=max(1, keep_latest)), KeepRecordedBest()])
  options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(Path(workdir).resolve() / 'checkpoints', options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, record: dict[str, Any],
         val_metric: float | None, key: str = BEST_METRIC) -> None:
  """Saves `state` at `step` (an epoch); record['best']['epoch'] is kept on disk.
  `val_metric` is this epoch's validation value, stored as the orbax metric `key`."""
  metrics = {'best_epoch': int(record['best']['epoch'])}
  if val_metric is not None:
    metrics[key] = float(val_metric)
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          record=ocp.args.JsonSave(record)),
            metrics=metrics)


def abstract_of(state):
  """Shapes, dtypes and shardings of a freshly built state, to restore into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def abstract_replicated(init_fn, mesh):
  """What `init_fn()` would build, as shapes placed replicated on `mesh`: a restore target
  that costs no computation and no memory."""
  rep = replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
                      jax.eval_shape(init_fn))


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state) -> tuple[Any, dict]:
  try:
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
  except Exception as e:
    raise CheckpointError(
        f'cannot restore checkpoint step {step} in {mngr.directory}: {type(e).__name__}: {e}. '
        'The files were left as they are; move that step folder aside to resume from an '
        'earlier one, or use a fresh --workdir.') from e
  return out['state'], dict(out['record'])


def record_at(mngr: ocp.CheckpointManager, step: int) -> dict:
  try:
    out = mngr.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
  except Exception as e:
    raise CheckpointError(f'cannot read the record of checkpoint step {step} in '
                          f'{mngr.directory}: {e}') from e
  return dict(out['record'])


class _NoMissingMetadata(logging.Filter):
  """Drops orbax's `Metadata file does not exist: .../_CHECKPOINT_METADATA` only."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not ('orbax' in record.pathname and
                str(record.msg).startswith('Metadata file does not exist'))


@contextlib.contextmanager
def quiet_missing_metadata():
  """Orbax warns that a sound checkpoint lacks metadata when asked for the layout of a
  step's `state` item (load_state): it looks for a _CHECKPOINT_METADATA there, where only
  the step folder has one. Orbax logs through absl's logger, so the filter sits there,
  while that one read runs."""
  quiet, logger = _NoMissingMetadata(), logging.getLogger('absl')
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def load_state(workdir: str | Path, step: int | None = None, device=None) -> tuple[Any, dict]:
  """(state, record) of a step (default: the latest) on one local device.

  Needs no model code and works whatever topology saved it (another device
  count, several processes): the target shapes come from the checkpoint itself.
  """
  mngr = manager(workdir)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f'no checkpoint in {Path(workdir) / "checkpoints"}')
  device = device or jax.local_devices()[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  try:
    with quiet_missing_metadata():
      meta = ocp.StandardCheckpointer().metadata(Path(mngr.directory) / str(step) / 'state')
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                            dict(meta.item_metadata.tree))
  except Exception as e:
    raise CheckpointError(f'cannot read checkpoint step {step} in {mngr.directory}: {e}') from e
  return restore(mngr, step, abstract)
