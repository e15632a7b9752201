"""CDAE (Wu et al. 2016): a denoising autoencoder with a per-user input node.

  h_u = sigmoid(W^T corrupt(x_u) + V_u + b),   logits_u = W'^T h_u + b'
  loss_u = sum_i sigmoid cross-entropy(x_ui, logits_ui) + lam ||V_u||^2
  plus lam (||W||^2 + ||W'||^2) per step, as Wu et al.'s L2 on all weights.

The input is binary; corruption is inverted dropout on the clicks (CDAE's "drop-out
noise"); the loss runs over all items (the paper's logistic loss, no negative
sampling). The first layer is a sparse gather-sum; training is data parallel over the
project's mesh like `vaecf.steps`, with the user nodes indexed by user id.

Strong generalisation: a held-out user has no trained V_u. We fit it at fold-in by
`fold_in_steps` of Adam on that user's own training objective (corrupted fold-in
items reconstructing the fold-in items, the same L2 on V_u) with every shared weight
fixed: the MAP estimate of the user node under the trained model, which is what
training computes for a training user. `user_node='zero'` (the prior mean, V_u = 0)
is the cheap alternative; both are measured on validation users and the better kept.
The epoch is chosen by validation NDCG@100, as for Mult-VAE/DAE.
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sp

from vaecf import distributed, evaluate, input_pipeline
from vaecf.models import likelihoods, nn
from vaecf.sparse import SparseRows

log = logging.getLogger(__name__)

AXIS = distributed.AXIS
# Wu et al. use H = 50 and tune the corruption (and lam); we use the Mult-DAE width H = 200,
# lam fixed (the epoch is chosen on validation) and a higher Adam rate than the VAE's 1e-3,
# without which 200 epochs of 10 steps leave CDAE near the popularity floor on ML-1M.
GRID = tuple({'corruption': q} for q in (0.2, 0.5))
DEFAULTS = {'hidden': 200, 'corruption': 0.5, 'lam': 1e-5, 'lr': 5e-3, 'batch_size': 500,
            'epochs': 200, 'eval_every': 10, 'fold_in_steps': 25, 'fold_in_lr': 0.1,
            'user_node': 'fit', 'seed': 0, 'eval_batch_size': 2000}
SHARED = ('enc_w', 'enc_b', 'dec_w', 'dec_b')


def init(key, n_items: int, n_users: int, hidden: int) -> dict:
  k_enc, k_dec = jax.random.split(key)
  enc, dec = nn.init_dense(k_enc, n_items, hidden), nn.init_dense(k_dec, hidden, n_items)
  return {'enc_w': enc['w'], 'enc_b': enc['b'], 'dec_w': dec['w'], 'dec_b': dec['b'],
          'user': jnp.zeros((n_users, hidden), jnp.float32)}


def corrupted(x: SparseRows, key, rate: float):
  """Inverted dropout on the clicks, keyed per (user position, item) like the VAE's."""
  if key is None or rate <= 0.0:
    return x.vals
  pos = jnp.take(x.user_pos, x.rows, mode='fill', fill_value=0)
  keep = nn.keyed_uniform(key, pos, x.cols) >= rate
  return jnp.where(keep, x.vals / (1.0 - rate), 0.0)


def logits(p: dict, x: SparseRows, vals, v_BxH):
  h_BxH = jax.nn.sigmoid(nn.sparse_dense({'w': p['enc_w'], 'b': p['enc_b']}, x, vals) + v_BxH)
  return nn.dense({'w': p['dec_w'], 'b': p['dec_b']}, h_BxH)


def user_loss(p: dict, v_BxH, x: SparseRows, key, rate: float, lam: float):
  """Per-user loss [B]: logistic NLL over all items plus the user node's L2."""
  l_BxI = logits(p, x, corrupted(x, key, rate), v_BxH)
  return -likelihoods.logistic(l_BxI, x) + lam * jnp.sum(jnp.square(v_BxH), axis=1)


def fit_user_nodes(p: dict, x: SparseRows, key, hp: dict):
  """V_u for users unseen in training: Adam on their own loss, shared weights fixed."""
  v0 = jnp.zeros((x.n_users, p['enc_w'].shape[1]), jnp.float32)
  if hp['user_node'] == 'zero':
    return v0
  opt = optax.adam(hp['fold_in_lr'])
  # Each user's loss only touches its own row and Adam is per coordinate: the sum
  # optimises every user independently.
  grad = jax.grad(lambda v, k: jnp.sum(user_loss(p, v, x, k, hp['corruption'], hp['lam'])))

  def body(t, carry):
    v, s = carry
    u, s = opt.update(grad(v, jax.random.fold_in(key, t)), s, v)
    return optax.apply_updates(v, u), s

  return jax.lax.fori_loop(0, hp['fold_in_steps'], body, (v0, opt.init(v0)))[0]


def _static(hp: dict) -> dict:
  keys = ('corruption', 'lam', 'fold_in_steps', 'fold_in_lr', 'user_node')
  return {k: hp[k] for k in keys}


def make_scorer(mesh, hp: dict):
  """score(shared, x_global) -> logits [B, I] with each user's node fitted at fold-in."""
  hp = _static(hp)
  key = jax.random.key(0)

  def per_shard(p, x):
    v = fit_user_nodes(p, x, key, hp)
    return logits(p, x, x.vals, v)
  return jax.jit(jax.shard_map(per_shard, mesh=mesh, in_specs=(jax.P(), jax.P(AXIS)),
                               out_specs=jax.P(AXIS)))


def _score_fn(score, shared: dict, mesh):
  n = mesh.devices.size

  def score_fn(x: sp.csr_matrix):
    out = score(shared, input_pipeline.global_batch(x, mesh, -(-x.shape[0] // n)))
    return out[:x.shape[0]]
  return score_fn


def make_train_step(mesh, hp: dict, optimizer):
  """step(state, batch, user_ids) -> (state, loss); V rows of the batch's users train."""
  rate, lam = hp['corruption'], hp['lam']
  base_key = jax.random.fold_in(jax.random.key(hp['seed']), 1)

  def per_shard(params, x, uid, key, n_users):
    def data_loss(p):
      v = jnp.take(p['user'], uid, axis=0)
      return jnp.sum(user_loss(p, v, x, key, rate, lam) * x.user_mask) / n_users
    loss, grads = jax.value_and_grad(data_loss)(params)
    return jax.lax.psum(loss, AXIS), grads  # params replicated: grads already summed

  sharded = jax.shard_map(per_shard, mesh=mesh,
                          in_specs=(jax.P(), jax.P(AXIS), jax.P(AXIS), jax.P(), jax.P()),
                          out_specs=jax.P())
  penalty = lambda p: lam * (jnp.sum(jnp.square(p['enc_w'])) + jnp.sum(jnp.square(p['dec_w'])))

  def step(state, x: SparseRows, uid):
    key = jax.random.fold_in(base_key, state['step'])
    n_users = jnp.maximum(jnp.sum(x.user_mask), 1.0)
    loss, grads = sharded(state['params'], x, uid, key, n_users)
    pen, pgrads = jax.value_and_grad(penalty)(state['params'])
    grads = jax.tree.map(jnp.add, grads, pgrads)
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    return {'step': state['step'] + 1, 'params': optax.apply_updates(state['params'], updates),
            'opt_state': opt_state}, loss + pen
  return jax.jit(step, donate_argnums=(0,))


def _user_ids(ids: np.ndarray, mesh, per: int):
  n = mesh.devices.size
  uid = np.zeros(n * per, np.int32)
  uid[:len(ids)] = ids
  local = input_pipeline.select_shards(uid, input_pipeline.local_shard_ids(mesh), n)
  return input_pipeline.put_batch(local, mesh)


def fit(train: sp.csr_matrix, hparams: dict, validation=None) -> tuple[dict, dict]:
  """Trains on the training users; with `validation`, keeps the best epoch by NDCG@100."""
  hp = {**DEFAULTS, **hparams}
  mesh = distributed.make_mesh()
  n_users, n_items = train.shape
  optimizer = optax.adam(hp['lr'])
  params = init(jax.random.key(hp['seed']), n_items, n_users, int(hp['hidden']))
  state = jax.device_put({'step': jnp.zeros((), jnp.int32), 'params': params,
                          'opt_state': optimizer.init(params)}, distributed.replicated(mesh))
  step = make_train_step(mesh, hp, optimizer)
  score = make_scorer(mesh, hp)
  n_dev, bs = mesh.devices.size, int(hp['batch_size'])
  per, eval_bs = -(-bs // n_dev), -(-int(hp['eval_batch_size']) // n_dev) * n_dev
  shared = lambda s: {k: np.asarray(jax.device_get(s['params'][k])) for k in SHARED}
  best, curve = {'epoch': 0, 'ndcg@100': -np.inf, 'shared': None}, []
  epochs = int(hp['epochs'])
  for epoch in range(1, epochs + 1):
    order = input_pipeline.epoch_order(n_users, int(hp['seed']), epoch)
    losses = []
    for start in range(0, n_users, bs):
      ids = order[start:start + bs]
      x = input_pipeline.global_batch(train[ids], mesh, per)
      state, loss = step(state, x, _user_ids(ids, mesh, per))
      losses.append(loss)
    if not np.isfinite(float(losses[-1])):
      raise FloatingPointError(f'CDAE loss became non-finite at epoch {epoch}: lower lr')
    if validation is None or (epoch % int(hp['eval_every']) and epoch != epochs):
      continue
    val = evaluate.evaluate(_score_fn(score, state['params'], mesh), *validation,
                            batch_size=eval_bs).mean('ndcg@100')
    curve.append((epoch, float(np.mean(jax.device_get(losses))), val))
    log.info('cdae epoch %d loss %.2f val ndcg@100 %.4f', *curve[-1])
    if val > best['ndcg@100']:
      best = {'epoch': epoch, 'ndcg@100': val, 'shared': shared(state)}
  if best['shared'] is None:  # no validation: the last epoch
    best = {'epoch': epochs, 'ndcg@100': None, 'shared': shared(state)}
  info = {'hparams': {'epochs': best['epoch']}, 'best_epoch': best['epoch'],
          'val_curve': curve}
  if validation is not None:  # the user-node treatment, chosen on validation users
    ndcg = {mode: evaluate.evaluate(
        _score_fn(make_scorer(mesh, {**hp, 'user_node': mode}), best['shared'], mesh),
        *validation, batch_size=eval_bs).mean('ndcg@100') for mode in ('fit', 'zero')}
    info['val_ndcg@100_by_user_node'] = ndcg
    info['hparams']['user_node'] = max(ndcg, key=ndcg.get)
  return best['shared'], info


def make_score_fn(arrays: dict, hparams: dict):
  hp = {**DEFAULTS, **hparams}
  mesh = distributed.make_mesh()
  shared = jax.device_put({k: jnp.asarray(arrays[k]) for k in SHARED}, distributed.replicated(mesh))
  return _score_fn(make_scorer(mesh, hp), shared, mesh)
