"""RaCT (vaecf/models/ract.py): the critic's target against the evaluator's NDCG@100, the
split against the actor's dropout, the stage schedule (what moves in which epoch, what
stays bit-identical out of its stage), the MLE stage against Mult-VAE, and resumption."""
import json

import numpy as np
import pytest
import scipy.sparse as sp

import jax
import jax.numpy as jnp

from vaecf import checkpoints, distributed, evaluate, input_pipeline, models, steps, train
from vaecf.data import load_split
from vaecf.models import nn, ract, vae
from test_train import small_config

MLE_EPOCHS, CRITIC_EPOCHS, EPOCHS = 2, 1, 4  # epochs 1-2 MLE, 3 critic, 4 joint


def ract_config(tmp_path):
  c = small_config(tmp_path)
  c.model.name = 'ract'
  for k, v in models.settings('ract').model.items():  # its own keys, declared defaults
    c.model[k] = v
  c.model.hidden_dims, c.model.latent_dim, c.model.critic_dims = (16,), 8, (16, 16, 4)
  c.model.mle_epochs, c.model.critic_epochs = MLE_EPOCHS, CRITIC_EPOCHS
  # Rates that move a small critic and actor visibly in one step.
  c.model.critic_learning_rate, c.model.ac_learning_rate = 1e-2, 1e-3
  # All ~490 training users in one batch: one step an epoch, one shape to compile.
  c.train.batch_size, c.train.epochs, c.train.keep_latest = 500, EPOCHS, EPOCHS
  return c


@pytest.fixture(scope='module')
def split(tmp_path_factory):
  return load_split(ract_config(tmp_path_factory.mktemp('data')).data)[0]


@pytest.fixture(scope='module')
def full_run(tmp_path_factory, split):
  wd = tmp_path_factory.mktemp('full')
  c = ract_config(wd)
  return c, wd, train.train_and_evaluate(c, wd, split=split)


def _equal(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def _one_device_batch(rows: sp.csr_matrix):
  return input_pipeline.global_batch(rows, distributed.make_mesh(jax.devices()[:1]),
                                     rows.shape[0])


def test_critic_target_is_the_evaluators_ndcg(split):
  rows = split.train[:40]
  x = _one_device_batch(rows)
  rng = np.random.default_rng(0)
  present = np.asarray(x.vals) > 0
  # Users 0-4 keep every item as seen: no targets.
  seen = present & ((rng.random(present.shape) < 0.5) | (np.asarray(x.rows) < 5))
  target = present & ~seen
  scores = rng.normal(size=(rows.shape[0], split.n_items)).astype(np.float32)
  got = np.asarray(ract.ndcg_at_k(jnp.asarray(scores), x, jnp.asarray(seen),
                                  jnp.asarray(target)))
  r, cols = np.asarray(x.rows), np.asarray(x.cols)
  csr = lambda m: sp.csr_matrix((np.ones(m.sum(), np.float32), (r[m], cols[m])),
                                shape=rows.shape)
  has_target = np.flatnonzero(np.diff(csr(target).indptr) > 0)  # the evaluator's users
  res = evaluate.evaluate(lambda f: scores[has_target], csr(seen), csr(target),
                          metrics=('ndcg@100',), batch_size=rows.shape[0])
  assert 0 < res.n_users < rows.shape[0]
  np.testing.assert_allclose(got[res.rows], res.per_user['ndcg@100'], rtol=1e-6, atol=0)
  others = np.setdiff1d(np.arange(rows.shape[0]), res.rows)
  assert np.all(got[others] == 0)  # no target: 0, as the authors' (the evaluator skips them)


def test_the_split_is_the_actors_input_dropout(split):
  x = _one_device_batch(split.train[:40])
  key = jax.random.key(3)
  seen, unseen = ract.seen_mask(x, key, 0.5)
  kept = np.asarray(nn.normalized_input(x, key, 0.5)) != 0
  np.testing.assert_array_equal(np.asarray(seen), kept)
  present = np.asarray(x.vals) > 0
  np.testing.assert_array_equal(np.asarray(seen) | np.asarray(unseen), present)
  assert 0.3 < np.asarray(seen).sum() / present.sum() < 0.7


def test_stage_schedule_and_untouched_states(full_run, split):
  c, wd, _ = full_run
  model = models.build(c, split.n_items)
  init_key = jax.random.fold_in(jax.random.key(c.train.seed), 0)
  init = steps.init_state(model, steps.make_optimizer(c), init_key)
  states = [init] + [checkpoints.load_state(wd, e)[0] for e in range(1, EPOCHS + 1)]
  assert [int(s['model_state']['epoch']) for s in states] == list(range(EPOCHS + 1))
  assert [int(ract.stage_of(jnp.int32(e), MLE_EPOCHS, CRITIC_EPOCHS))
          for e in range(EPOCHS)] == [ract.MLE, ract.MLE, ract.CRITIC, ract.JOINT]
  moved = lambda a, b, *path: not _equal(_at(a, path), _at(b, path))
  for e in range(1, EPOCHS + 1):
    before, after = states[e - 1], states[e]
    stage = [None, 'mle', 'mle', 'critic', 'joint'][e]
    # The actor moves in the MLE and joint stages, with its own Adam in each.
    assert moved(before, after, 'params', 'actor') == (stage != 'critic')
    assert moved(before, after, 'opt_state', 'ract', 'mle') == (stage == 'mle')
    assert moved(before, after, 'opt_state', 'ract', 'ac') == (stage == 'joint')
    # The critic trains from the critic stage on; its statistics track until then.
    assert moved(before, after, 'params', 'critic', 'layers') == (stage != 'mle')
    assert moved(before, after, 'opt_state', 'ract', 'critic') == (stage != 'mle')
    assert moved(before, after, 'params', 'critic', 'norm') == (stage != 'joint')
    assert moved(before, after, 'opt_state', 'ract', 'norm') == (stage != 'joint')
  last = states[-1]['opt_state']['ract']
  # load_state reads the checkpoint without the model: Adam's state comes back as dicts.
  assert ([int(last[k][0]['count']) for k in ('mle', 'ac', 'critic')]
          + [int(last['norm']['count'])]) == [2, 1, 2, 3]
  # The tracked statistics are the features' moments: counts and an NLL of a few hundred.
  norm = states[-1]['params']['critic']['norm']
  assert np.all(np.asarray(norm['sq']) > np.asarray(norm['mean']) ** 2)
  assert 1 < norm['mean'][0] < 1e3 and norm['mean'][2] > norm['mean'][0]


def _at(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def test_the_mle_stage_is_mult_vae(full_run, split, tmp_path):
  """The same init, keys, annealing and Adam as Mult-VAE's run. Equal to float32 rounding,
  not to the bit: XLA compiles the MLE branch inside the stage's lax.switch with other
  fusions than Mult-VAE's step, and its gradient's sums round differently (about 1 ulp;
  Adam's update from the same gradient is bit-identical)."""
  c, wd, _ = full_run
  m = ract_config(tmp_path)
  m.model.name, m.model.module = 'multvae', ''
  m.train.epochs = MLE_EPOCHS
  train.train_and_evaluate(m, tmp_path / 'multvae', split=split)
  vae_state = checkpoints.load_state(tmp_path / 'multvae', MLE_EPOCHS)[0]
  ract_state = checkpoints.load_state(wd, MLE_EPOCHS)[0]
  pairs = [(ract_state['params']['actor'], vae_state['params']),
           (ract_state['opt_state']['ract']['mle'], vae_state['opt_state'])]
  for a, b in pairs:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-7)
  rows = lambda w: [r for r in _metrics(w) if r['epoch'] <= MLE_EPOCHS]
  for a, b in zip(rows(wd), rows(tmp_path / 'multvae'), strict=True):
    assert a['val_ndcg@100'] == pytest.approx(b['val_ndcg@100'], rel=1e-5)
    assert a['train_nll'] == pytest.approx(b['train_nll'], rel=1e-6)
    assert a['beta'] == b['beta']


def _metrics(wd):
  return [json.loads(line) for line in open(wd / 'metrics.jsonl')]


def test_killed_and_resumed_run_equals_an_uninterrupted_one(full_run, split, tmp_path):
  c, wd, full = full_run
  # Killed inside the critic stage: the stage comes back from the checkpoint's epoch.
  train.train_and_evaluate(c, tmp_path, split=split, stop_after_epoch=MLE_EPOCHS + 1)
  resumed = train.train_and_evaluate(c, tmp_path, split=split)
  assert resumed['test'] == full['test'] and resumed['best_epoch'] == full['best_epoch']
  a, b = (checkpoints.load_state(w)[0] for w in (wd, tmp_path))
  assert int(a['step']) == EPOCHS and _equal(a, b)
  # The joint stage trained the critic: its training NDCG estimate is on the record.
  joint = _metrics(wd)[-1]
  assert joint['train_ndcg'] > 0 and 0 < joint['train_critic'] < 1


def test_score_and_fallback_are_the_actors(split, tmp_path):
  c = ract_config(tmp_path)
  model = models.build(c, split.n_items)
  params = model.init(jax.random.key(0))
  x = _one_device_batch(split.train[:8])
  np.testing.assert_array_equal(model.score(params, x), vae.score(params['actor'], x))
  np.testing.assert_array_equal(model.fallback(params),
                                vae.prior_mean_scores(params['actor'], latent_dim=8))
