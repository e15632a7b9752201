"""Serving without the training code: `export(rec, DIR)` and `load_exported(DIR)`.

`export` writes:

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
An export folder is a program: score.bin is compiled code, to be trusted as such.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from vaecf.common import VaecfError, next_power_of_two
from vaecf.serving.recommender import Recommender

FORMAT_VERSION = 1
PLATFORMS = ('cpu', 'cuda', 'tpu')
INPUT_LAYOUT = ('rows[nnz] int32 user of each nonzero (padding: b), cols[nnz] int32 item '
                'column, vals[nnz] float32 (padding: 0), user_mask[b] float32 ones')


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
    n = next_power_of_two(x.nnz, 64)  # few distinct shapes: few compiles
    rows = np.full(n, b, np.int32)
    rows[:x.nnz] = np.repeat(np.arange(b, dtype=np.int32), np.diff(x.indptr))
    cols, vals = np.zeros(n, np.int32), np.zeros(n, np.float32)
    cols[:x.nnz], vals[:x.nnz] = x.indices, x.data
    return self.exported.call(self.leaves, rows, cols, vals, np.ones(b, np.float32))


class ExportError(VaecfError, ValueError):
  """An export folder that is incomplete, inconsistent or holds unusable numbers."""


def _read(path: Path, name: str, read):
  try:
    return read(path / name)
  except FileNotFoundError:
    raise ExportError(f'{path}: {name} is missing; re-export the model') from None
  except Exception as e:  # truncated or foreign files: say which one
    raise ExportError(f'{path}: cannot read {name} ({type(e).__name__}: {e}); re-export '
                      'the model') from e


def load_exported(path: str | Path) -> Recommender:
  """A Recommender over an export folder, scoring with the serialised function.

  Every file is checked against meta.json and the serialised function's own
  signature (parameter shapes, item count), and parameters and fallback scores must
  be finite, so a damaged folder fails here with the file named, not at scoring.
  """
  path = Path(path)
  meta = _read(path, 'meta.json', lambda f: json.loads(f.read_text()))
  if meta.get('format_version') != FORMAT_VERSION:
    raise ExportError(f'{path}: export format {meta.get("format_version")}, this code reads '
                      f'{FORMAT_VERSION}')
  exported = _read(path, 'score.bin',
                   lambda f: jax.export.deserialize(bytearray(f.read_bytes())))
  n_params, n_items = int(meta['n_params']), int(meta['n_items'])
  with _read(path, 'params.npz', lambda f: np.load(f, allow_pickle=False)) as z:
    leaves = _read(path, 'params.npz', lambda f: [z[f'p{i:04d}'] for i in range(n_params)])
  item_ids = _read(path, 'item_ids.npy', lambda f: np.load(f, allow_pickle=False))
  fallback = _read(path, 'fallback.npy', lambda f: np.load(f, allow_pickle=False))
  avals = exported.in_avals
  if len(avals) != n_params + 4:
    raise ExportError(f'{path}: score.bin takes {len(avals) - 4} parameter arrays, meta.json '
                      f'says {n_params}')
  for i, (leaf, aval) in enumerate(zip(leaves, avals)):
    if tuple(leaf.shape) != tuple(aval.shape) or leaf.dtype != aval.dtype:
      raise ExportError(f'{path}: params.npz p{i:04d} is {leaf.dtype}{list(leaf.shape)}, '
                        f'score.bin expects {aval.dtype}{list(aval.shape)}')
    if not np.isfinite(leaf).all():
      raise ExportError(f'{path}: params.npz p{i:04d} holds non-finite values (NaN/Inf): '
                        'the exported model cannot rank')
  out_items = exported.out_avals[0].shape[-1]
  for what, n in (('score.bin output', out_items), ('item_ids.npy', len(item_ids)),
                  ('fallback.npy', fallback.shape[0] if fallback.ndim == 1 else -1)):
    if n != n_items:
      raise ExportError(f'{path}: {what} has {n} items, meta.json says {n_items}')
  if not np.isfinite(fallback).all():
    raise ExportError(f'{path}: fallback.npy holds non-finite values')
  titles = {}
  if (path / 'titles.json').exists():
    names = _read(path, 'titles.json', lambda f: json.loads(f.read_text()))
    if len(names) != n_items:
      raise ExportError(f'{path}: titles.json has {len(names)} titles for {n_items} items')
    titles = {i: t for i, t in zip(item_ids.tolist(), names) if t is not None}
  return Recommender(ExportedScorer(exported, leaves), item_ids, fallback=fallback,
                     titles=titles, batch_size=meta['batch_size'],
                     info={'exported': str(path), **meta['source']})
