"""Loading a model to recommend with: from a trained workdir, or from an export.

`export(rec, DIR)` writes what serving needs without the training code:

  score.bin      jax.export of score(params_leaves, rows, cols, vals, user_mask) -> [b, I]
  params.npz     the parameter leaves p0000, p0001, ... in the order score.bin takes them
  item_ids.npy   the ORIGINAL item id of each column
  fallback.npy   scores for a user with no known item
  titles.json    one title (or null) per column, when the dataset has titles
  meta.json      what was exported, from where, and the input layout

Parameters are arguments, not constants baked into the program: score.bin stays
a few KB and the same file serves any retrained parameters of the same shapes.
The batch size b and the nonzero count nnz are symbolic, so one export serves
any batch; each shape the caller uses compiles once. `load_exported(DIR)` needs
only jax, numpy and scipy (it never imports vaecf.models or vaecf.train).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from vaecf.recommend import Recommender

FORMAT_VERSION = 1
PLATFORMS = ('cpu', 'cuda', 'tpu')
INPUT_LAYOUT = ('rows[nnz] int32 user of each nonzero (padding: b), cols[nnz] int32 item '
                'column, vals[nnz] float32 (padding: 0), user_mask[b] float32 ones')


# -- from a trained workdir ------------------------------------------------------------------

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
    logging.warning('no item titles: %s', e)
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
  logging.warning('best checkpoint (epoch %s) is not in %s; using the latest, %d', best,
                  saved, max(saved))
  return max(saved)


def from_workdir(workdir: str | Path, step: int | None = None, *, titles=None
                 ) -> Recommender:
  """A Recommender for a run of vaecf.main (best checkpoint unless `step`) or a baseline."""
  wd = Path(workdir).expanduser().resolve()
  if not (wd / 'item_ids.npy').exists():
    raise FileNotFoundError(f'{wd} is not a trained workdir (no item_ids.npy)')
  item_ids = np.load(wd / 'item_ids.npy', allow_pickle=False)
  names = _titles(wd, titles)
  if (wd / 'baseline.json').exists():
    from vaecf import baselines
    info = {'workdir': str(wd), **json.loads((wd / 'baseline.json').read_text())}
    return Recommender(baselines.load(wd), item_ids, titles=names, info=info)

  from vaecf import checkpoints, models, steps, train, workdir as workdir_lib
  config = workdir_lib.load_config(wd)  # older runs: new keys take their defaults
  train.import_model_module(config)
  model = models.build(config, len(item_ids))
  if not (wd / 'checkpoints').is_dir():
    raise FileNotFoundError(f'no checkpoints folder in {wd}')
  mngr = checkpoints.manager(wd)
  if step is None:
    step = _best_step(wd, mngr)
  elif step not in mngr.all_steps():
    raise FileNotFoundError(f'no checkpoint step {step} in {wd}; saved: {mngr.all_steps()}')
  mesh = steps.make_mesh()
  rep = steps.replicated(mesh)
  shapes = jax.eval_shape(lambda: steps.init_state(model, steps.make_optimizer(config),
                                                   jax.random.key(0)))
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)
  state, _ = checkpoints.restore(mngr, step, abstract)
  params = state['params']
  for_params, batch = train.make_scorer(model, mesh, config.train.eval_batch_size)
  fallback = None  # other models: their own scores for an empty row
  if config.model.name == 'multvae':
    from vaecf.models import vae
    dtype = None if config.model.compute_dtype == 'float32' else jnp.dtype(
        config.model.compute_dtype)
    z0 = jnp.zeros((1, params['decoder'][0]['w'].shape[0]), jnp.float32)
    fallback = np.asarray(vae.decode(params, z0, dtype=dtype))[0]
  info = {'workdir': str(wd), 'step': int(step), 'model': config.model.name,
          'dataset': config.data.name}
  rec = Recommender(for_params(params), item_ids, fallback=fallback, titles=names,
                    batch_size=batch, row_multiple=mesh.devices.size, info=info)
  rec.model, rec.params = model, params
  return rec


# -- export and load -------------------------------------------------------------------------

def export(rec: Recommender, out_dir: str | Path, platforms=PLATFORMS) -> Path:
  """Serialises `rec`'s model scoring with jax.export; returns the folder."""
  if rec.model is None or rec.params is None:
    raise ValueError('only models built by vaecf.models can be exported (their score is a '
                     'JAX function of parameters); this recommender wraps an opaque score_fn '
                     f'({rec.info})')
  from vaecf.sparse import SparseRows
  leaves, treedef = jax.tree.flatten(jax.device_get(rec.params))
  score = rec.model.score

  def fn(leaves_, rows, cols, vals, user_mask):
    pos = jnp.arange(user_mask.shape[0], dtype=jnp.int32)
    return score(jax.tree.unflatten(treedef, leaves_), SparseRows(rows, cols, vals, user_mask,
                                                                  pos))

  b, nnz = jax.export.symbolic_shape('b, nnz')
  spec = jax.ShapeDtypeStruct
  exp = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(
      [spec(l.shape, l.dtype) for l in leaves], spec((nnz,), jnp.int32),
      spec((nnz,), jnp.int32), spec((nnz,), jnp.float32), spec((b,), jnp.float32))
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'score.bin').write_bytes(exp.serialize())
  np.savez(out / 'params.npz', **{f'p{i:04d}': np.asarray(l) for i, l in enumerate(leaves)})
  np.save(out / 'item_ids.npy', rec.item_ids)
  np.save(out / 'fallback.npy', rec.fallback)
  if rec.titles:
    titles = [rec.titles.get(i) for i in rec.item_ids.tolist()]
    (out / 'titles.json').write_text(json.dumps(titles))
  meta = {'format_version': FORMAT_VERSION, 'n_items': rec.n_items, 'n_params': len(leaves),
          'platforms': list(platforms), 'inputs': INPUT_LAYOUT, 'source': rec.info,
          'batch_size': rec.batch_size}
  (out / 'meta.json').write_text(json.dumps(meta, indent=2))
  return out


class ExportedScorer:
  """score(csr [B, I]) -> scores [B, I] through a deserialised jax.export function."""

  def __init__(self, exported, leaves: list[np.ndarray]):
    self.exported = exported
    self.leaves = [jnp.asarray(l) for l in leaves]

  def __call__(self, x: sp.csr_matrix) -> jax.Array:
    x = sp.csr_matrix(x)
    b = x.shape[0]
    n = max(64, 1 << max(x.nnz - 1, 0).bit_length())  # power-of-two nnz: few compiles
    rows = np.full(n, b, np.int32)
    rows[:x.nnz] = np.repeat(np.arange(b, dtype=np.int32), np.diff(x.indptr))
    cols, vals = np.zeros(n, np.int32), np.zeros(n, np.float32)
    cols[:x.nnz], vals[:x.nnz] = x.indices, x.data
    return self.exported.call(self.leaves, rows, cols, vals, np.ones(b, np.float32))


def load_exported(path: str | Path) -> Recommender:
  """A Recommender over an export folder, scoring with the serialised function."""
  path = Path(path)
  meta = json.loads((path / 'meta.json').read_text())
  if meta['format_version'] != FORMAT_VERSION:
    raise ValueError(f'{path}: export format {meta["format_version"]}, this code reads '
                     f'{FORMAT_VERSION}')
  exported = jax.export.deserialize(bytearray((path / 'score.bin').read_bytes()))
  with np.load(path / 'params.npz') as z:
    leaves = [z[f'p{i:04d}'] for i in range(meta['n_params'])]
  item_ids = np.load(path / 'item_ids.npy', allow_pickle=False)
  titles = {}
  if (path / 'titles.json').exists():
    names = json.loads((path / 'titles.json').read_text())
    titles = {i: t for i, t in zip(item_ids.tolist(), names) if t is not None}
  return Recommender(ExportedScorer(exported, leaves), item_ids,
                     fallback=np.load(path / 'fallback.npy'), titles=titles,
                     batch_size=meta['batch_size'],
                     info={'exported': str(path), **meta['source']})
