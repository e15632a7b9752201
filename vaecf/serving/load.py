"""A Recommender from a trained workdir: a run of vaecf.main (its best checkpoint) or a
saved baseline. The model and training code load only when a workdir is opened, so
importing vaecf.serving stays light.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from vaecf.serving.recommender import Recommender

log = logging.getLogger(__name__)


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


def _best_step(workdir: Path, mngr) -> int:
  from vaecf import checkpoints
  saved = mngr.all_steps()
  if not saved:
    raise FileNotFoundError(f'no checkpoint in {workdir / "checkpoints"}')
  results = workdir / 'results.json'
  if results.exists():
    best = json.loads(results.read_text())['best_epoch']
  else:  # a run still going (or killed): its latest record knows the best so far
    best = checkpoints.record_at(mngr, max(saved))['best']['epoch']
  if best in saved:
    return best
  log.warning('best checkpoint (epoch %s) is not in %s; using the latest, %d', best,
                  saved, max(saved))
  return max(saved)


def import_saved_model(config, workdir: Path, trust_code: bool) -> None:
  """Imports the model module a saved config names, only if the caller trusts it.

  Built-in (already registered) models need nothing; a module would run its code.
  """
  from vaecf import models, train
  if not config.model.module or config.model.name in models.available():
    return
  if not trust_code:
    raise PermissionError(
        f'{workdir} was trained with model {config.model.name!r} from module '
        f'{config.model.module!r}; opening it imports and runs that module. Pass '
        'trust_code=True (--trust_code on the command line) only if you trust the code.')
  train.import_model_module(config)


def from_workdir(workdir: str | Path, step: int | None = None, *, titles=None,
                 trust_code: bool = False) -> Recommender:
  """A Recommender for a run of vaecf.main (best checkpoint unless `step`) or a baseline.

  A workdir whose model comes from an experiment's module (`model.module` in its
  config.json) would run that module's code when opened: it is imported only with
  `trust_code=True`, so a workdir someone sent you runs nothing by default.
  """
  wd = Path(workdir).expanduser().resolve()
  if not (wd / 'item_ids.npy').exists():
    raise FileNotFoundError(f'{wd} is not a trained workdir (no item_ids.npy)')
  item_ids = np.load(wd / 'item_ids.npy', allow_pickle=False)
  names = _titles(wd, titles)
  if (wd / 'baseline.json').exists():
    from vaecf import baselines
    info = {'workdir': str(wd), **json.loads((wd / 'baseline.json').read_text())}
    return Recommender(baselines.load(wd), item_ids, titles=names, info=info)

  from vaecf import checkpoints, distributed, models, steps, workdir as workdir_lib
  config = workdir_lib.load_config(wd)  # older runs: new keys take their defaults
  import_saved_model(config, wd, trust_code)
  model = models.build(config, len(item_ids))
  if not (wd / 'checkpoints').is_dir():
    raise FileNotFoundError(f'no checkpoints folder in {wd}')
  mngr = checkpoints.manager(wd)
  if step is None:
    step = _best_step(wd, mngr)
  elif step not in mngr.all_steps():
    raise FileNotFoundError(f'no checkpoint step {step} in {wd}; saved: {mngr.all_steps()}')
  # Restored from the checkpoint's own metadata: any device count or process layout
  # that saved it loads here, and no optimizer needs building.
  state, _ = checkpoints.load_state(wd, step)
  params = state['params']
  mesh = distributed.make_mesh()
  for_params, batch = steps.make_scorer(model, mesh, config.train.eval_batch_size)
  # None: the Recommender scores an empty row with the model itself.
  fallback = None if model.fallback is None else np.asarray(model.fallback(params))
  info = {'workdir': str(wd), 'step': int(step), 'model': config.model.name,
          'dataset': config.data.name}
  rec = Recommender(for_params(params), item_ids, fallback=fallback, titles=names,
                    batch_size=batch, row_multiple=mesh.devices.size, info=info)
  rec.model, rec.params = model, params
  return rec


