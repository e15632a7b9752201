"""VASP (vaecf/models/vasp.py): the forward pass and the training loss against a NumPy
transcription of the authors' Keras model (zombak79/vasp, VASP.ipynb), the focal loss
against the focal-loss paper's formula, the half/half augmentation, Keras's Nadam in
stages, resumption, and a short training run on the embedded data."""
import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

import jax
import jax.numpy as jnp

from vaecf import checkpoints, distributed, evaluate, input_pipeline, models, steps, train
from vaecf.data import load_split
from vaecf.models import vae, vasp
from vaecf.sparse import SparseRows, shard_rows
from test_train import small_config


def vasp_config(tmp_path, **train_kw):
  c = small_config(tmp_path, **train_kw)
  c.model.name = 'vasp'
  for k, v in models.settings('vasp').model.items():  # its own keys, declared defaults
    c.model[k] = v
  # Shallow stacks compile faster; the depth is the forward test's business.
  c.model.hidden_dims = (16,) * 2
  c.model.decoder_layers = 2
  c.model.latent_dim = 8
  # All ~480 training users in one batch: one step an epoch, few shapes to compile.
  c.train.batch_size = 500
  c.train.learning_rate = 1e-3
  c.train.epochs = 2
  c.model.stage_steps = (1, 1)  # the stage (and Nadam restart) changes mid-run
  c.model.stage_lr_factors = (1.0, 0.2)
  return c


N_ITEMS = 1000  # the embedded data's first 1,000 items: a 1000 x 1000 shallow path


@pytest.fixture(scope='module')
def split(tmp_path_factory):
  full = load_split(vasp_config(tmp_path_factory.mktemp('data')).data)[0]
  cut = lambda m: sp.csr_matrix(m[:, :N_ITEMS])
  return dataclasses.replace(
      full, train=cut(full.train), val_tr=cut(full.val_tr), val_te=cut(full.val_te),
      test_tr=cut(full.test_tr), test_te=cut(full.test_te), item_ids=full.item_ids[:N_ITEMS])


def _batch(rows, n):
  mesh = distributed.make_mesh(jax.devices()[:1])
  return input_pipeline.global_batch(rows, mesh, n)


# ------------------------------------------------------------ the authors' model in NumPy

def _sigmoid(a):
  return 1 / (1 + np.exp(-a))


def _np_stack(q, pre1, n_layers):
  """encode / decode's e1..en: LayerNormalization(swish(Dense(e_{k-1}) + e1 + ... ))."""
  swish = lambda a: a / (1 + np.exp(-a))
  def ln(a, p):  # Keras LayerNormalization, epsilon 1e-3
    m, v = a.mean(-1, keepdims=True), a.var(-1, keepdims=True)
    return (a - m) / np.sqrt(v + 1e-3) * p['scale'] + p['bias']
  e = [ln(swish(pre1), q['ln1'])]
  for k in range(2, n_layers + 1):
    d = q[f'dense{k}']
    e.append(ln(swish(e[-1] @ d['kernel'] + d['bias'] + sum(e)), q[f'ln{k}']))
  return e[-1]


def _np_vasp(params, x, eps=None):
  """VASP.Model.call on dense binary rows x: d * ease. z = mu (predict) unless eps is
  given (training: z = mu + exp(logvar / 2) eps). Returns (output, mu, logvar)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  enc, dec = p['encoder'], p['decoder']
  dense = lambda h, q: h @ q['kernel'] + q['bias']
  e7 = _np_stack(enc['stack'], dense(x, enc['dense1']), 7)
  mu, logvar = dense(e7, enc['mean']), dense(e7, enc['log_var'])
  z = mu if eps is None else mu + np.exp(0.5 * logvar) * eps
  e5 = _np_stack(dec['stack'], dense(z, dec['dense1']), 5)
  d = _sigmoid(dense(e5, dec['resnet'])) * _sigmoid(dense(z, dec['latent']))
  w = p['ease']['kernel'].copy()
  np.fill_diagonal(w, 0.0)  # DiagonalToZero
  return d * _sigmoid(x @ w), mu, logvar


def _np_focal(y, p, alpha=0.25, gamma=2.0, eps=1e-7):
  """tfa.losses.sigmoid_focal_crossentropy(y, p) with Keras's binary_crossentropy."""
  pc = np.clip(p, eps, 1 - eps)
  ce = -(y * np.log(pc + eps) + (1 - y) * np.log(1 - pc + eps))
  p_t = y * p + (1 - y) * (1 - p)
  return np.sum((y * alpha + (1 - y) * (1 - alpha)) * (1 - p_t) ** gamma * ce, axis=-1)


def _model(n_items):
  return vasp.VASP(n_items, hidden=16, encoder_layers=7, decoder_layers=5, latent=8)


def _with_diagonal(params, key):
  # A nonzero diagonal in the stored kernel: the forward must ignore it, as the
  # constraint's projection does.
  w = params['ease']['kernel']
  diag = jax.random.normal(key, (w.shape[0],))
  return {**params, 'ease': {'kernel': w + jnp.diag(diag)}}


def test_forward_matches_the_authors_model(split):
  r = _model(split.n_items)
  params = _with_diagonal(r.init(jax.random.key(0)), jax.random.key(1))
  rows = split.train[:6]
  x = _batch(rows, 6)
  want, _, _ = _np_vasp(params, rows.toarray().astype(np.float64))
  got = r.score(params, x)
  np.testing.assert_allclose(np.exp(np.asarray(got, np.float64)), want, rtol=2e-4, atol=1e-7)
  # Each path on its own: the shallow one is sigmoid(x W) with W's diagonal zeroed.
  w = vasp.off_diagonal(params['ease']['kernel'])
  a_r, a_l, a_e, _, _ = r.forward(params, x, x.vals, w)
  w64 = np.asarray(params['ease']['kernel'], np.float64)
  np.fill_diagonal(w64, 0)
  np.testing.assert_allclose(a_e, rows.toarray() @ w64, rtol=1e-4, atol=1e-5)
  deep = jax.nn.sigmoid(a_r) * jax.nn.sigmoid(a_l)
  np.testing.assert_allclose(deep * jax.nn.sigmoid(a_e), want, rtol=2e-4, atol=1e-7)
  # Init: Keras's Glorot-uniform kernels and zero biases; the stored diagonal is zero.
  fresh = r.init(jax.random.key(0))
  assert np.all(np.diag(np.asarray(fresh['ease']['kernel'])) == 0)
  bound = np.sqrt(6 / (split.n_items + 16))
  k1 = np.asarray(fresh['encoder']['dense1']['kernel'])
  assert np.abs(k1).max() <= bound and np.abs(k1).max() > 0.9 * bound
  assert not np.any(np.asarray(fresh['encoder']['dense1']['bias']))


def test_training_loss_is_the_authors_on_both_half_splits(split):
  r = _model(split.n_items)
  params = _with_diagonal(r.init(jax.random.key(2)), jax.random.key(3))
  rows = split.train[10:15]
  x = _batch(rows, 5)
  key = jax.random.key(7)
  got, aux = r.loss(params, x, key, 0.0, focal_alpha=0.25, focal_gamma=2.0, kl_weight=1.0)
  # The same draws: the split and eps from the keys the loss derives.
  k_split, k_z = jax.random.split(key)
  first, second = vasp.split_halves(x, k_split)
  dense = lambda v: np.asarray(vasp.dense_rows(x, v, split.n_items), np.float64)
  zeros = jnp.zeros((5, 8))
  eps = [np.asarray(vae.sample(jax.random.fold_in(k_z, d), zeros, zeros, x.user_pos))
         for d in (0, 1)]
  # SplitGenerator's batch: rows (second half -> first half) and (first -> second).
  xs = np.concatenate([dense(second), dense(first)])
  ys = np.concatenate([dense(first), dense(second)])
  out, mu, logvar = _np_vasp(params, xs, np.concatenate(eps))
  focal = _np_focal(ys, out)
  kl = -0.5 * np.mean(1 + logvar - mu ** 2 - np.exp(logvar))
  want = focal.mean() + kl  # Keras: the loss's batch mean plus add_loss's KL
  np.testing.assert_allclose(float(jnp.mean(got)), want, rtol=2e-4)
  np.testing.assert_allclose(aux['focal'], 0.5 * (focal[:5] + focal[5:]), rtol=2e-4)


def test_focal_loss_is_the_papers_and_pushes_the_right_way():
  rng = np.random.default_rng(0)
  y = (rng.random((4, 30)) < 0.3).astype(np.float64)
  p = rng.uniform(1e-3, 1 - 1e-3, (4, 30))
  # Lin et al. 2017: FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t).
  for alpha, gamma in ((0.25, 2.0), (0.5, 0.0), (0.9, 1.0)):
    p_t = np.where(y == 1, p, 1 - p)
    a_t = np.where(y == 1, alpha, 1 - alpha)
    want = np.sum(-a_t * (1 - p_t) ** gamma * np.log(p_t), axis=-1)
    got = vasp.focal_crossentropy(jnp.float32(p), jnp.float32(y), alpha, gamma)
    np.testing.assert_allclose(got, want, rtol=2e-5)
    np.testing.assert_allclose(got, _np_focal(y, p, alpha, gamma), rtol=2e-5)
  g = np.asarray(jax.grad(lambda q: vasp.focal_crossentropy(q, jnp.float32(y), 0.25, 2.0)
                          .sum())(jnp.float32(p)))
  assert np.all(g[y == 1] < 0) and np.all(g[y == 0] > 0)  # raise positives, lower the rest
  # Keras's clip: a positive at p = 0 costs alpha * -log(2e-7); the crossentropy passes no
  # gradient there, but tfa's factor (1 - p)^gamma of the unclipped p still pushes p up.
  y1, p0 = jnp.ones((1, 1)), jnp.zeros((1, 1))
  ce = -np.log(2e-7)
  np.testing.assert_allclose(vasp.focal_crossentropy(p0, y1, 0.25, 2.0), [0.25 * ce], rtol=1e-5)
  g0 = jax.grad(lambda q: vasp.focal_crossentropy(q, y1, 0.25, 2.0)[0])(p0)[0, 0]
  np.testing.assert_allclose(g0, -0.25 * 2 * ce, rtol=1e-5)


_split_halves = jax.jit(vasp.split_halves, static_argnums=2)


def _halves_by_user(x: SparseRows, first, second):
  out = {}
  for r, c, v, f, s in zip(*(np.asarray(a) for a in (x.rows, x.cols, x.vals, first, second))):
    if r >= x.n_users:
      assert f == 0 and s == 0 and v == 0  # padding is in neither half
      continue
    pos = int(np.asarray(x.user_pos)[r])
    out.setdefault(pos, ({}, {}))[0 if f else 1][int(c)] = True
    assert f + s == 1
  return {u: (set(a), set(b)) for u, (a, b) in out.items()}


def test_halves_partition_each_users_items_and_are_redrawn(split):
  rows = split.train[:40]
  x = shard_rows(rows, 1)
  halves = _halves_by_user(x, *_split_halves(x, jax.random.key(0)))
  for u in range(40):
    items = set(rows[u].indices)
    a, b = halves.get(u, (set(), set()))
    assert a | b == items and not a & b
    assert len(a) == len(items) // 2  # int(0.5 n) first, the rest second (split2_50)
  again = _halves_by_user(x, *_split_halves(x, jax.random.key(0)))
  other = _halves_by_user(x, *_split_halves(x, jax.random.key(1)))
  assert again == halves and other != halves
  # A user's halves do not depend on the batch layout: two shards draw what one draws.
  two = shard_rows(rows, 2)
  n = two.rows.shape[0] // 2
  got = {}
  for s in range(2):
    part = SparseRows(*(a[s * n:(s + 1) * n] for a in (two.rows, two.cols, two.vals)),
                      two.user_mask[s * 20:(s + 1) * 20], two.user_pos[s * 20:(s + 1) * 20])
    got.update(_halves_by_user(part, *_split_halves(part, jax.random.key(0))))
  assert got == halves
  # One click: the first half is empty and the click is the second (p[:0], p[0:]).
  one = shard_rows(rows[:1][:, rows[0].indices[:1]], 1)
  f, s = _split_halves(one, jax.random.key(3))
  assert float(f.sum()) == 0 and float(s.sum()) == 1


def _np_keras_nadam(grads, lr, stages, factors, b1=0.9, b2=0.999, eps=1e-7):
  """optimizer_v2.Nadam's updates, one fresh optimizer per stage (a Keras re-compile)."""
  bounds = np.cumsum(stages)[:-1]
  out, var = [], np.zeros_like(grads[0])
  for t, g in enumerate(grads):
    s = int(np.sum(t >= bounds))
    if t == 0 or (s > 0 and t == bounds[s - 1]):
      m, v, cache, it = np.zeros_like(g), np.zeros_like(g), 1.0, 0
    local, nxt = it + 1, it + 2
    m_t = b1 * (1 - 0.5 * 0.96 ** (0.004 * local))
    m_t_1 = b1 * (1 - 0.5 * 0.96 ** (0.004 * nxt))
    cache = cache * m_t
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_bar = (1 - m_t) * g / (1 - cache) + m_t_1 * m / (1 - cache * m_t_1)
    new = var - lr * factors[s] * m_bar / (np.sqrt(v / (1 - b2 ** local)) + eps)
    out.append(new - var)
    var, it = new, it + 1
  return out


def test_nadam_is_keras_with_a_restart_per_stage():
  grads = np.random.default_rng(1).normal(size=(8, 5))
  tx = vasp.keras_nadam(1e-2, (3, 2, 1), (1.0, 0.2, 0.5))
  state = tx.init(jnp.zeros(5))
  want = _np_keras_nadam(grads, 1e-2, (3, 2, 1), (1.0, 0.2, 0.5))
  for g, w in zip(grads, want):  # two steps past the last stage's end: it carries on
    u, state = jax.jit(tx.update)(jnp.float32(g), state)
    np.testing.assert_allclose(u, w, rtol=1e-5, atol=1e-9)


def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path, split):
  c = vasp_config(tmp_path)
  full = train.train_and_evaluate(c, tmp_path / 'full', split=split)
  train.train_and_evaluate(c, tmp_path / 'resumed', split=split, stop_after_epoch=1)
  resumed = train.train_and_evaluate(c, tmp_path / 'resumed', split=split)
  assert resumed['test'] == full['test']
  a, b = (checkpoints.load_state(tmp_path / w)[0] for w in ('full', 'resumed'))
  nadam = a['opt_state']['nadam']  # restored without a template: a dict
  assert int(a['step']) == 2 and int(nadam['count']) == 2
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  assert np.all(np.diag(np.asarray(a['params']['ease']['kernel'])) == 0)


def test_thirty_steps_beat_popularity(tmp_path, split):
  """Training works: 30 full-batch steps (at a rate far above the authors' 5e-5) rank the
  validation users' held-out items above popularity (NDCG@100 about 0.35 against 0.29)."""
  c = vasp_config(tmp_path)
  c.model.hidden_dims = (32,) * 2
  c.model.latent_dim = 16
  c.model.stage_steps, c.model.stage_lr_factors = (), (1.0,)
  c.train.learning_rate = 3e-3
  model = models.build(c, split.n_items)
  mesh = distributed.make_mesh(jax.devices()[:1])
  state = steps.init_state(model, steps.make_optimizer(c), jax.random.key(0))
  step = steps.make_train_step(model, steps.make_optimizer(c), mesh, c.train.seed)
  hp = steps.hparams_from_config(c, model)
  batch = input_pipeline.global_batch(split.train, mesh, 500)
  for _ in range(30):
    state, metrics = step(state, batch, hp)
  assert np.isfinite(float(metrics['loss']))
  score = jax.jit(model.score)
  ndcg = evaluate.evaluate(
      lambda x: score(state['params'], input_pipeline.global_batch(x, mesh, x.shape[0])),
      split.val_tr, split.val_te).mean('ndcg@100')
  counts = np.asarray(split.train.sum(0)).ravel()
  pop = evaluate.evaluate(lambda x: np.tile(counts, (x.shape[0], 1)), split.val_tr,
                          split.val_te).mean('ndcg@100')
  assert ndcg > pop + 0.03, (ndcg, pop)
