"""Every jitted function the project runs, lowered for GPU and TPU on this machine.

  vaecf-benchmark --lower=cuda,tpu

`jax.export` lowers for any platform without its hardware, so a CPU-only machine can
check that each train step (every phase of every model), the vmapped sweep step, the
evaluator's metrics with their top-k, the scorer and the serving export all lower to
StableHLO for 'cuda' and 'tpu'. The functions are built as the trainer builds them
(presets.compose, models.build, steps.*) at tiny sizes, on a mesh of every device here,
and called on abstract arguments only (no data, nothing runs).

Per function and platform the report gives: lowered or not (the error's first line),
the collectives in the StableHLO text and the custom-call targets, flagging those
that look CPU-only. The collectives are the explicit ones (shard_map's psum of the
gradient and of the reported values); those XLA's partitioner adds for the evaluator's
auto-sharded arrays appear only when a GPU or TPU compiles the module.

It is over 300 lines because each jitted function needs its own abstract arguments,
built as its caller builds them; the list is the point of the module.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from vaecf import device_data, distributed, evaluate, models, presets, steps, sweep
from vaecf.sparse import SparseRows

PLATFORMS = ('cuda', 'tpu')
# What jax.export knows; it lowers a misspelt name without complaint, so it is checked here.
KNOWN_PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
MODELS = ('multvae', 'multdae', 'recvae', 'hvamp', 'ract', 'vasp')
COLLECTIVES = ('all_reduce', 'all_gather', 'reduce_scatter', 'collective_permute',
               'all_to_all')
# Custom-call targets that only XLA:CPU provides (LAPACK, DUCC FFTs, host callbacks).
_CPU_ONLY = re.compile(r'^(lapack_|ducc_|cpu_|xla_ffi_python_cpu|xla_python_cpu|blas_|'
                       r'eigen_)', re.IGNORECASE)
_COLLECTIVE_RE = re.compile(r'"?stablehlo\.(' + '|'.join(COLLECTIVES) + r')"?\b')
_CUSTOM_CALL_RE = re.compile(r'custom_call\s*@([\w.$-]+)')

# Tiny sizes: items, users and nonzeros per device shard, sweep models.
N_ITEMS, USERS_PER_SHARD, NNZ_PER_SHARD, SWEEP_MODELS = 16, 2, 16, 3
TINY_MODEL = {
    'multvae': {'hidden_dims': (8,), 'latent_dim': 4},
    'multdae': {'hidden_dims': (), 'latent_dim': 8},
    'recvae': {'hidden_dims': (8, 8), 'latent_dim': 4},
    'hvamp': {'hidden_dims': (8, 8), 'latent_dim': 4, 'z2_dim': 4, 'n_pseudo_inputs': 3},
    'ract': {'hidden_dims': (8,), 'latent_dim': 4, 'critic_dims': (4, 4, 2)},
    'vasp': {'hidden_dims': (8, 8), 'latent_dim': 4, 'decoder_layers': 1},
}


def tiny_config(name: str):
  c = presets.compose(name)
  for k, v in TINY_MODEL[name].items():
    c.model[k] = v
  c.train.batch_size = USERS_PER_SHARD
  return c


def _spec(tree, sharding=None):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                      tree)


def abstract_batch(mesh) -> SparseRows:
  """A global SparseRows batch (shard-major leading axes), sharded over 'data'."""
  d = mesh.devices.size
  s = distributed.batch_sharding(mesh)
  spec = lambda n, dt: jax.ShapeDtypeStruct((d * n,), dt, sharding=s)
  return SparseRows(rows=spec(NNZ_PER_SHARD, jnp.int32), cols=spec(NNZ_PER_SHARD, jnp.int32),
                    vals=spec(NNZ_PER_SHARD, jnp.float32),
                    user_mask=spec(USERS_PER_SHARD, jnp.float32),
                    user_pos=spec(USERS_PER_SHARD, jnp.int32))


def _exporter(fn, *args) -> Callable[[str], str]:
  """platform -> StableHLO text of jax.export of the jitted `fn` on `args`."""
  def lower(platform):
    return jax.export.export(fn, platforms=[platform])(*args).mlir_module()
  return lower


def _tiny_model(name: str, mesh):
  """(config, model, optimizer, abstract train state, abstract hparams) of the tiny
  `name`, replicated over `mesh`, as the trainer builds them."""
  c = tiny_config(name)
  model = models.build(c, N_ITEMS)
  opt = steps.make_optimizer(c)
  rep = distributed.replicated(mesh)
  state = _spec(jax.eval_shape(lambda: steps.init_state(model, opt, jax.random.key(0))), rep)
  hp = _spec(jax.eval_shape(lambda: steps.hparams_from_config(c, model)), rep)
  return c, model, opt, state, hp


def _train_steps(name: str, mesh) -> dict[str, Callable[[str], str]]:
  _, model, opt, state, hp = _tiny_model(name, mesh)
  batch = abstract_batch(mesh)
  if len(model.phases) == 1:
    fns = {f'train.{name}': steps.make_train_step(model, opt, mesh, seed=0)}
  else:
    fns = {f'train.{name}.{p}': f
           for p, f in steps.make_phase_steps(model, opt, mesh, seed=0).items()}
  return {k: _exporter(f, state, batch, hp) for k, f in fns.items()}


def _sweep_steps(name: str, mesh, platform_mpp: dict) -> dict[str, Callable[[str], str]]:
  """The vmapped sweep step of each of the model's phases."""
  c = tiny_config(name)
  model = models.build(c, N_ITEMS)
  opt = steps.make_optimizer(c)
  rep = distributed.replicated(mesh)
  states = _spec(jax.eval_shape(lambda: sweep.stack_states(
      steps.init_state(model, opt, jax.random.key(0)), SWEEP_MODELS)), rep)
  hp = _spec(jax.eval_shape(lambda: jax.tree.map(
      lambda v: jnp.stack([v] * SWEEP_MODELS), steps.hparams_from_config(c, model))), rep)
  batch = abstract_batch(mesh)

  def lower(phase, platform):
    # As a sweep on that platform runs it: models_per_pass picked by backend.
    mpp = platform_mpp.setdefault(platform, sweep.resolve_models_per_pass(None, platform))
    fn = sweep.make_sweep_steps(model, opt, mesh, seed=0, models_per_pass=mpp)[phase]
    return _exporter(fn, states, batch, hp)(platform)
  if len(model.phases) == 1:
    return {f'sweep_step.{name}': lambda platform: lower(model.phases[0].name, platform)}
  return {f'sweep_step.{name}.{p.name}': (lambda platform, p=p.name: lower(p, platform))
          for p in model.phases}


def _after_fns(name: str, mesh) -> dict[str, Callable[[str], str]]:
  """Each phase's `after` hook (RecVAE's prior refresh), for one run and for a sweep."""
  _, model, opt, state, _ = _tiny_model(name, mesh)
  states = _spec(jax.eval_shape(lambda: sweep.stack_states(
      steps.init_state(model, opt, jax.random.key(0)), SWEEP_MODELS)),
      distributed.replicated(mesh))
  fns = {}
  for p in model.phases:
    if p.after is not None:
      fns[f'after.{name}.{p.name}'] = _exporter(steps.make_after_fn(p), state)
  for p, f in sweep.make_sweep_after_fns(model).items():
    fns[f'sweep_after.{name}.{p}'] = _exporter(f, states)
  return fns


def _sweep_bookkeeping(name: str, mesh) -> dict[str, Callable[[str], str]]:
  """The sweep's per-model state moves: take the active models' state, put it back, and
  keep each model's best parameters (vaecf.sweep's jitted helpers)."""
  c = tiny_config(name)
  model = models.build(c, N_ITEMS)
  opt = steps.make_optimizer(c)
  rep = distributed.replicated(mesh)
  states = _spec(sweep._per_model(jax.eval_shape(lambda: sweep.stack_states(
      steps.init_state(model, opt, jax.random.key(0)), SWEEP_MODELS))), rep)
  active = SWEEP_MODELS - 1  # a model stopped: the take/put path
  idx = jax.ShapeDtypeStruct((active,), jnp.int32)
  part = jax.eval_shape(sweep._take, states, idx)
  params = states['params']
  improved = jax.ShapeDtypeStruct((SWEEP_MODELS,), jnp.bool_)
  return {f'sweep_take.{name}': _exporter(sweep._take, states, idx),
          f'sweep_put.{name}': _exporter(sweep._put, states, idx, _spec(part, rep)),
          f'sweep_keep_best.{name}': _exporter(sweep._keep_best, params, params, improved)}


def _models_metrics(mesh) -> Callable[[str], str]:
  """The sweep's evaluator: the metrics vmapped over M models' scores."""
  b = mesh.devices.size * USERS_PER_SHARD
  fn = evaluate._models_metrics(evaluate.parse_metrics(evaluate.DEFAULT_METRICS))
  scores = jax.ShapeDtypeStruct((SWEEP_MODELS, b, N_ITEMS), jnp.float32)
  pad = lambda dt: jax.ShapeDtypeStruct((b, 8), dt)
  return _exporter(fn, scores, pad(jnp.int32), pad(jnp.float32), pad(jnp.int32),
                   pad(jnp.float32))


def _recommender_select() -> Callable[[str], str]:
  """The recommender's top-k after the fallback and the seen-item mask."""
  from vaecf.serving import recommender
  b, k = 2 * USERS_PER_SHARD, 5
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  fn = jax.jit(lambda *a: recommender._select(*a, k=k))
  return _exporter(fn, f32(b, N_ITEMS), jax.ShapeDtypeStruct((b,), jnp.bool_), f32(N_ITEMS),
                   jax.ShapeDtypeStruct((b, 8), jnp.int32), f32(b, 8))


def _sweep_score_fn(name: str, mesh) -> Callable[[str], str]:
  c = tiny_config(name)
  model = models.build(c, N_ITEMS)
  params = _spec(jax.eval_shape(lambda: sweep.stack_states(
      {'step': 0, 'params': model.init(jax.random.key(0))}, SWEEP_MODELS)['params']),
      distributed.replicated(mesh))
  return _exporter(sweep.make_sweep_score_fn(model, mesh), params, abstract_batch(mesh))


def _device_block(name: str, mesh) -> Callable[[str], str]:
  """A block of train steps on device-resident data (vaecf.device_data): the batches
  gathered on the device from its CSR and the pass's order, scanned."""
  _, model, opt, state, hp = _tiny_model(name, mesh)
  rep = distributed.replicated(mesh)
  batch_size = mesh.devices.size * USERS_PER_SHARD
  rng = np.random.default_rng(0)  # a tiny CSR: its largest batch fixes the gather's shape
  train = sp.random(4 * batch_size, N_ITEMS, density=0.3, format='csr', random_state=rng,
                    data_rvs=np.ones, dtype=np.float32)
  k = 2
  feed = device_data.DeviceData(train, mesh, batch_size, 0, [(1, 0)], steps_per_dispatch=k)
  block = feed._block(steps.make_train_step(model, opt, mesh, seed=0), k)
  users = _spec(feed.users(0, 1, 0), rep)
  return _exporter(block, state, users, _spec(feed.csr, rep),
                   jax.ShapeDtypeStruct((), jnp.int32), (), {'sched': hp})


def _closed_forms() -> dict[str, Callable[[str], str]]:
  """EASE's and EDLAE's weights from the Gram matrix (a Cholesky: cuSOLVER on a GPU,
  LAPACK on a CPU) and the dense scorer they share."""
  from vaecf.baselines import ease, edlae
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  gram = f32(N_ITEMS, N_ITEMS)
  return {'baseline.ease': _exporter(ease.ease_weights, gram, f32()),
          'baseline.edlae': _exporter(edlae.primal_weights, gram, f32(N_ITEMS)),
          'baseline.dense_scores': _exporter(ease.dense_scores, f32(USERS_PER_SHARD, N_ITEMS),
                                             gram)}


def _batch_metrics(mesh) -> Callable[[str], str]:
  """The evaluator's jitted metrics (top-k included) on a scorer's sharded output."""
  b = mesh.devices.size * USERS_PER_SHARD
  metrics = evaluate.parse_metrics(evaluate.DEFAULT_METRICS)
  scores = jax.ShapeDtypeStruct((b, N_ITEMS), jnp.float32,
                                sharding=distributed.batch_sharding(mesh))
  pad = lambda dt: jax.ShapeDtypeStruct((b, 8), dt)
  fn = lambda *a: evaluate.batch_metrics(*a, metrics=metrics)
  return _exporter(jax.jit(fn), scores, pad(jnp.int32), pad(jnp.float32), pad(jnp.int32),
                   pad(jnp.float32))


def _score_fn(name: str, mesh) -> Callable[[str], str]:
  c = tiny_config(name)
  model = models.build(c, N_ITEMS)
  params = _spec(jax.eval_shape(lambda: model.init(jax.random.key(0))),
                 distributed.replicated(mesh))
  return _exporter(steps.make_score_fn(model, mesh), params, abstract_batch(mesh))


def _serving_export(name: str) -> Callable[[str], str]:
  """vaecf.serving.export.export itself (its own function, symbolic batch and nnz),
  read back from the score.bin it writes."""
  import importlib  # the module: vaecf.serving's `export` is the function
  serving_export = importlib.import_module('vaecf.serving.export')
  from vaecf.serving.recommender import Recommender
  c = tiny_config(name)
  model = models.build(c, N_ITEMS)

  def lower(platform):
    rec = Recommender(None, np.arange(N_ITEMS), fallback=np.zeros(N_ITEMS, np.float32))
    rec.model, rec.params = model, model.init(jax.random.key(0))
    with tempfile.TemporaryDirectory(prefix='vaecf-lowering-') as tmp:
      out = serving_export.export(rec, Path(tmp) / platform, platforms=(platform,))
      exp = jax.export.deserialize(bytearray((out / 'score.bin').read_bytes()))
    return exp.mlir_module()
  return lower


def functions(mesh) -> dict[str, Callable[[str], str]]:
  """{name: platform -> StableHLO text}, one entry per jitted function checked."""
  fns: dict[str, Callable[[str], str]] = {}
  for name in MODELS:
    fns.update(_train_steps(name, mesh))
  for name in ('multvae', 'recvae'):
    fns.update(_sweep_steps(name, mesh, {}))
  fns.update(_after_fns('recvae', mesh))
  fns.update(_sweep_bookkeeping('multvae', mesh))
  fns['device_block.multvae'] = _device_block('multvae', mesh)
  fns['evaluate.batch_metrics'] = _batch_metrics(mesh)
  fns['evaluate.models_metrics'] = _models_metrics(mesh)
  for name in MODELS:
    fns[f'score.{name}'] = _score_fn(name, mesh)
  for name in MODELS:
    fns[f'export.{name}'] = _serving_export(name)
  fns['sweep_score.multvae'] = _sweep_score_fn('multvae', mesh)
  fns.update(_closed_forms())
  fns['recommend.select'] = _recommender_select()
  return fns


def analyse(text: str) -> dict[str, Any]:
  """Collective counts and custom-call targets in StableHLO text."""
  found = _COLLECTIVE_RE.findall(text)
  targets = sorted(set(_CUSTOM_CALL_RE.findall(text)))
  return {'collectives': {c: found.count(c) for c in COLLECTIVES},
          'custom_calls': targets,
          'cpu_only_calls': [t for t in targets if _CPU_ONLY.match(t)]}


def _first_line(e: BaseException) -> str:
  lines = [l for l in str(e).splitlines() if l.strip()]
  return f'{type(e).__name__}: {lines[0] if lines else ""}'.strip()


def lower_all(platforms=PLATFORMS, mesh=None) -> list[dict]:
  """One row per (function, platform): {'function', 'platform', 'devices', 'lowered',
  'error', 'collectives', 'custom_calls', 'cpu_only_calls'}."""
  mesh = distributed.make_mesh() if mesh is None else mesh
  rows = []
  try:
    fns = functions(mesh)
  except Exception as e:  # noqa: BLE001  (building failed: say so rather than crash)
    return [{'function': '<build>', 'platform': p, 'devices': mesh.devices.size,
             'lowered': False, 'error': _first_line(e), 'collectives': {},
             'custom_calls': [], 'cpu_only_calls': []} for p in platforms]
  for name, lower in fns.items():
    for platform in platforms:
      row = {'function': name, 'platform': platform, 'devices': mesh.devices.size,
             'lowered': False, 'error': '', 'collectives': {}, 'custom_calls': [],
             'cpu_only_calls': []}
      if platform not in KNOWN_PLATFORMS:
        row['error'] = f'unknown platform {platform!r}: one of {KNOWN_PLATFORMS}'
        rows.append(row)
        continue
      try:
        row.update(analyse(lower(platform)), lowered=True)
      except Exception as e:  # noqa: BLE001  (reported per function and platform)
        row['error'] = _first_line(e)
      rows.append(row)
  return rows


def all_lowered(rows: list[dict]) -> bool:
  return bool(rows) and all(r['lowered'] and not r['cpu_only_calls'] for r in rows)


def report(rows: list[dict]) -> str:
  """A small aligned table: one line per function and platform."""
  short = {'all_reduce': 'ar', 'all_gather': 'ag', 'reduce_scatter': 'rs',
           'collective_permute': 'cp', 'all_to_all': 'a2a'}
  head = ['function', 'platform', 'lowered', *short.values(), 'custom calls (CPU-only!)',
          'error']
  table = [head]
  for r in rows:
    calls = ', '.join(t + ('!' if t in r['cpu_only_calls'] else '') for t in r['custom_calls'])
    table.append([r['function'], r['platform'], 'yes' if r['lowered'] else 'NO',
                  *[str(r['collectives'].get(c, '-')) for c in short], calls or '-',
                  r['error']])
  widths = [max(len(row[i]) for row in table) for i in range(len(head))]
  lines = ['  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
           for row in table]
  ok = sum(r['lowered'] for r in rows)
  devices = rows[0]['devices'] if rows else 0
  lines.append(f'{ok}/{len(rows)} lowered on a mesh of {devices} device(s); collectives: '
               'ar all-reduce, ag all-gather, rs reduce-scatter, cp collective-permute, '
               'a2a all-to-all (explicit ones only: the partitioner adds its own when a GPU or '
               'TPU compiles)')
  return '\n'.join(lines)
