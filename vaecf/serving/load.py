"""A Recommender from a trained workdir: a run of vaecf.main (its best checkpoint), one
model of a sweep (vaecf.sweep, or a tune round's, at that model's best validation epoch)
or a saved baseline. The model and training code load only when a workdir is opened, so
importing vaecf.serving stays light.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from vaecf.common import VaecfError
from vaecf.serving.recommender import Recommender

log = logging.getLogger(__name__)


class ServingError(VaecfError, ValueError):
  """A folder that cannot be served as asked; nothing in it was changed."""


def _titles(workdir: Path, titles) -> dict:
  """The titles beside the ratings the run read (data.json's path), or from `titles`."""
  if titles is False:
    return {}
  from vaecf.data import EMBEDDED, readers
  path = titles
  if path in (None, True):
    info = workdir / 'data.json'
    path = json.loads(info.read_text()).get('path') if info.exists() else None
    if not path and (workdir / 'config.json').exists():  # a run given its split in memory
      data = json.loads((workdir / 'config.json').read_text()).get('data', {})
      path = data.get('path') or (EMBEDDED if data.get('name') == 'ml-latest-small' else None)
    if not path:
      return {}
    path = Path(path) if Path(path).is_dir() else Path(path).parent
  try:
    return readers.read_item_titles(path)
  except (OSError, ValueError) as e:  # titles are a nicety: never block recommending
    log.warning('no item titles: %s', e)
    return {}


def _best_step(workdir: Path, mngr, record: dict) -> int:
  """The best epoch of a single run; `record` is its latest checkpoint's."""
  saved = mngr.all_steps()
  results = workdir / 'results.json'
  if results.exists():
    best = json.loads(results.read_text())['best_epoch']
  else:  # a run still going (or killed): its latest record knows the best so far
    best = record['best']['epoch']
  if best in saved:
    return best
  log.warning('best checkpoint (epoch %s) is not in %s; using the latest, %d', best,
                  saved, max(saved))
  return max(saved)


def _refuse_groups(wd: Path) -> None:
  """A grouped sweep's folder holds sweeps, not a model: say how to serve one of them."""
  from vaecf.workdir import GROUPS_FILE
  if not (wd / GROUPS_FILE).exists():
    return
  try:
    groups = json.loads((wd / GROUPS_FILE).read_text())['groups']
    names = [f'{Path(g["workdir"]).name} ({len(g["points"])} model'
             f'{"s" if len(g["points"]) != 1 else ""})' for g in groups]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ServingError(f'{wd} holds a {GROUPS_FILE} (a sweep grouped by shape) that cannot '
                       f'be read ({type(e).__name__}: {e}); serve one of its group folders '
                       'with --workdir=DIR/<group> --model_index=K') from None
  raise ServingError(f'{wd} is a sweep grouped by shape ({GROUPS_FILE}), one sweep per '
                     'folder: serve one model of a group with --workdir='
                     f'{wd}/<group> --model_index=K; its groups: {", ".join(names)}')


def _sweep_member(wd: Path, config, n_items: int, mesh, best: list[dict],
                  model_index: int | None, step: int | None):
  """(params, best epoch) of model `model_index` of the sweep in `wd`."""
  import jax
  from vaecf import sweep
  n = len(best)
  points = ''
  if (wd / 'sweep.json').exists():  # a finished sweep names each model's settings
    models = json.loads((wd / 'sweep.json').read_text()).get('models', [])
    if len(models) == n:
      points = ' (' + '; '.join(f'{k}: ' + ', '.join(f'{name}={v}' for name, v in
                                                     m.get('point', {}).items())
                                for k, m in enumerate(models)) + ')'
  if model_index is None:
    raise ServingError(f'{wd} is a sweep of {n} models{points}: choose one with '
                       f'--model_index=K (0..{n - 1}) to serve model K at its best '
                       'validation epoch')
  if not 0 <= model_index < n:
    raise ServingError(f'--model_index={model_index}: {wd} is a sweep of {n} models, '
                       f'numbered 0..{n - 1}{points}')
  if step is not None:
    raise ServingError(f'--step={step}: {wd} is a sweep, which keeps each model\'s best '
                       'parameters, not each epoch\'s; leave --step out')
  params_M = sweep.restore_best_params(wd, config, n_items, mesh, n_models=n)
  params = jax.tree.map(lambda a: a[model_index], params_M)
  return params, int(best[model_index]['epoch'])


def import_saved_model(config, workdir: Path, trust_code: bool) -> None:
  """Imports the model module a saved config names, only if the caller trusts it: the
  project's one trust rule, vaecf.models.import_saved (an UntrustedCode, a
  PermissionError, otherwise)."""
  from vaecf import models
  models.import_saved(config, workdir, trust_code)


def _not_a_sweep(wd: Path, model_index: int) -> ServingError:
  return ServingError(f'--model_index={model_index} chooses a model of a sweep; {wd} is not a '
                      'sweep but one model: leave --model_index out')


def from_workdir(workdir: str | Path, step: int | None = None, *, titles=None,
                 trust_code: bool = False, model_index: int | None = None) -> Recommender:
  """A Recommender for a run of vaecf.main (best checkpoint unless `step`), model
  `model_index` of a sweep (vaecf.sweep, a tune round; at its best validation epoch) or a
  baseline.

  A workdir whose model comes from an experiment's module (`model.module` in its
  config.json) would run that module's code when opened: it is imported only with
  `trust_code=True`, so a workdir someone sent you runs nothing by default.
  """
  wd = Path(workdir).expanduser().resolve()
  if not (wd / 'item_ids.npy').exists():
    _refuse_groups(wd)
    raise FileNotFoundError(f'{wd} is not a trained workdir (no item_ids.npy)')
  item_ids = np.load(wd / 'item_ids.npy', allow_pickle=False)
  names = _titles(wd, titles)
  if (wd / 'baseline.json').exists():
    if model_index is not None:
      raise _not_a_sweep(wd, model_index)
    from vaecf import baselines
    info = {'workdir': str(wd), **json.loads((wd / 'baseline.json').read_text())}
    return Recommender(baselines.load(wd), item_ids, titles=names, info=info)

  from vaecf import checkpoints, distributed, models, steps, workdir as workdir_lib
  config = workdir_lib.load_config(wd)  # older runs: new keys take their defaults
  import_saved_model(config, wd, trust_code)
  model = models.build(config, len(item_ids))
  if not (wd / 'checkpoints').is_dir():
    raise FileNotFoundError(f'no checkpoints folder in {wd}')
  mesh = distributed.make_mesh()
  info = {'workdir': str(wd), 'step': None, 'model': config.model.name,
          'dataset': config.data.name}
  mngr = checkpoints.manager(wd)
  saved = mngr.all_steps()
  if not saved:
    raise FileNotFoundError(f'no checkpoint in {wd / "checkpoints"}')
  record = checkpoints.record_at(mngr, max(saved))
  if isinstance(record.get('best'), list):  # a sweep: one best per model
    params, step = _sweep_member(wd, config, len(item_ids), mesh, record['best'],
                                 model_index, step)
    info['model_index'] = int(model_index)
  else:
    if model_index is not None:
      raise _not_a_sweep(wd, model_index)
    if step is None:
      step = _best_step(wd, mngr, record)
    elif step not in saved:
      raise FileNotFoundError(f'no checkpoint step {step} in {wd}; saved: {saved}')
    # Restored from the checkpoint's own metadata: any device count or process layout
    # that saved it loads here, and no optimizer needs building.
    state, _ = checkpoints.load_state(wd, step)
    params = state['params']
  for_params, batch = steps.make_scorer(model, mesh, config.train.eval_batch_size)
  # None: the Recommender scores an empty row with the model itself.
  fallback = None if model.fallback is None else np.asarray(model.fallback(params))
  info['step'] = int(step)
  rec = Recommender(for_params(params), item_ids, fallback=fallback, titles=names,
                    batch_size=batch, row_multiple=mesh.devices.size, info=info)
  rec.model, rec.params = model, params
  return rec
