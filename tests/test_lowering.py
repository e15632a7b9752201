"""Every jitted function lowers for GPU and TPU on this CPU-only machine (jax.export)."""
import re
import subprocess
import sys

import jax
import pytest

from vaecf import distributed
from vaecf.tools import lowering

EXPECTED = {
    'train.multvae', 'train.multdae', 'train.recvae.encoder', 'train.recvae.decoder',
    'train.hvamp', 'train.ract', 'train.vasp', 'sweep_step.multvae', 'sweep_step.recvae.encoder',
    'sweep_step.recvae.decoder', 'after.recvae.encoder', 'sweep_after.recvae.encoder',
    'sweep_take.multvae', 'sweep_put.multvae', 'sweep_keep_best.multvae',
    'device_block.multvae', 'sweep_score.multvae', 'baseline.ease', 'baseline.edlae',
    'baseline.dense_scores',
    'evaluate.batch_metrics', 'evaluate.models_metrics', 'recommend.select',
    *(f'score.{m}' for m in lowering.MODELS),
    *(f'export.{m}' for m in lowering.MODELS),
}
TRAIN_STEPS = {n for n in EXPECTED if n.startswith(('train.', 'sweep_step.', 'device_block.'))}


@pytest.fixture(scope='module')
def rows():
  assert len(jax.devices()) == 4  # tests/conftest.py: 4 fake CPU devices
  return lowering.lower_all(('cuda', 'tpu'))


def test_every_function_lowers_for_cuda_and_tpu(rows):
  assert {r['function'] for r in rows} == EXPECTED  # a dropped function fails here
  got = {(r['function'], r['platform']) for r in rows}
  assert got == {(f, p) for f in EXPECTED for p in ('cuda', 'tpu')}
  failed = [(r['function'], r['platform'], r['error']) for r in rows if not r['lowered']]
  assert not failed
  assert not [r for r in rows if r['cpu_only_calls']]
  assert lowering.all_lowered(rows)
  table = lowering.report(rows)
  assert len(table.splitlines()) == len(rows) + 2
  n = 2 * len(EXPECTED)
  assert f'{n}/{n} lowered on a mesh of 4 device(s)' in table


def test_train_steps_all_reduce_over_4_devices_and_nothing_else(rows):
  for r in rows:
    c = r['collectives']
    others = {k: v for k, v in c.items() if k != 'all_reduce'}
    assert not any(others.values()), r  # data parallelism is psum only
    if r['function'] in TRAIN_STEPS:
      assert c['all_reduce'] > 0, r
    else:  # scoring, metrics and the export are per-user: no explicit collective
      assert c['all_reduce'] == 0, r


def _reduced_shapes(text):
  return set(re.findall(r'"stablehlo\.all_reduce".*?\}\) : \((tensor<[^>]*>)\)', text,
                        flags=re.S))


def test_the_gradient_is_all_reduced_on_4_devices_and_not_on_one():
  mesh = distributed.make_mesh()
  text = lowering.functions(mesh)['train.multvae']('cuda')
  shapes = _reduced_shapes(text)
  n, h, z = lowering.N_ITEMS, 8, 4  # lowering.TINY_MODEL['multvae']
  # The weights' gradients: encoder [I, h], decoder [z, h] and [h, I].
  for w in (f'{n}x{h}', f'{z}x{h}', f'{h}x{n}'):
    assert f'tensor<{w}xf32>' in shapes, (w, shapes)
  assert 'tensor<f32>' in shapes  # the loss and the reported sums
  # One device: steps._data_parallel runs the plain function, no psum at all.
  one = distributed.make_mesh(jax.devices()[:1])
  single = lowering.lower_all(('tpu',), mesh=one)
  train = [r for r in single if r['function'] in TRAIN_STEPS]
  assert train and all(r['lowered'] and r['collectives']['all_reduce'] == 0 for r in train)


def test_an_unknown_platform_is_reported_not_lowered():
  mesh = distributed.make_mesh(jax.devices()[:1])
  rows = lowering.lower_all(('cuda ', 'gpu'), mesh=mesh)
  assert rows and not any(r['lowered'] for r in rows)
  assert 'unknown platform' in rows[0]['error']
  assert not lowering.all_lowered(rows)


def test_benchmark_lower_flag_prints_the_table_and_exits_0():
  proc = subprocess.run([sys.executable, '-m', 'vaecf.tools.benchmark', '--lower=cuda,tpu'],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'train.recvae.encoder' in proc.stdout
  n = 2 * len(EXPECTED)
  assert f'{n}/{n} lowered' in proc.stdout
