"""Model numerics against independent NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from vaecf import models, sparse
from vaecf.config import base_config
from vaecf.models import dae, likelihoods, nn, vae


def _random_csr(n_users=9, n_items=30, density=0.2, seed=0, empty_rows=(3,)):
  x = sp.random(n_users, n_items, density, format='csr', random_state=seed)
  x.data[:] = 1.0
  x = sp.lil_matrix(x)
  for r in empty_rows:
    x[r, :] = 0
  return sp.csr_matrix(x)


def _np_mlp(layers, h, final_activation=False):
  for i, p in enumerate(layers):
    h = h @ np.asarray(p['w']) + np.asarray(p['b'])
    if i < len(layers) - 1 or final_activation:
      h = np.tanh(h)
  return h


def _np_l2norm(x):
  return x / np.sqrt(np.maximum((x * x).sum(1, keepdims=True), 1e-12))


def _np_log_softmax(l):
  m = l.max(1, keepdims=True)
  return l - m - np.log(np.exp(l - m).sum(1, keepdims=True))


def test_sparse_encoder_equals_dense_and_empty_user_is_finite():
  x = _random_csr()
  params = vae.init(jax.random.key(0), 30, (16,), 4)
  mu, logvar = vae.encode(params, sparse.shard_rows(x))
  h = _np_mlp(params['encoder'], _np_l2norm(x.toarray()))
  np.testing.assert_allclose(mu, h[:, :4], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logvar, h[:, 4:], rtol=1e-5, atol=1e-6)
  assert np.isfinite(np.asarray(mu)).all()
  assert np.abs(np.asarray(mu)[3] - h[3, :4]).max() < 1e-6  # empty user: bias path only


def test_dropout_is_inverted_and_keyed_per_nonzero():
  x = _random_csr(n_users=200, n_items=50, density=0.3, empty_rows=())
  rows = sparse.shard_rows(x)
  v0 = np.asarray(nn.normalized_input(rows))
  v = np.asarray(nn.normalized_input(rows, jax.random.key(1), 0.5))
  real = np.asarray(rows.vals) > 0
  kept = v[real] != 0
  assert 0.45 < kept.mean() < 0.55
  np.testing.assert_allclose(v[real][kept], 2 * v0[real][kept], rtol=1e-6)


def test_vae_loss_matches_numpy():
  x = _random_csr()
  rows = sparse.shard_rows(x)
  params = vae.init(jax.random.key(0), 30, (16,), 4)
  key, beta = jax.random.key(5), 0.3
  loss_B, aux = vae.loss(params, rows, key, beta, dropout_rate=0.5)
  # Reference: reproduce dropout and eps draws from the same keys, then dense NumPy.
  k_drop, k_eps = jax.random.split(key)
  v = np.asarray(nn.normalized_input(rows, k_drop, 0.5))
  xin = np.zeros(x.shape, np.float32)
  m = np.asarray(rows.vals) > 0
  xin[np.asarray(rows.rows)[m], np.asarray(rows.cols)[m]] = v[m]
  h = _np_mlp(params['encoder'], xin)
  mu, logvar = h[:, :4], h[:, 4:]
  eps = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(k_eps, i), (4,)))
                  for i in range(x.shape[0])])
  z = mu + eps * np.exp(0.5 * logvar)
  logits = _np_mlp(params['decoder'], z)
  nll = -(x.toarray() * _np_log_softmax(logits)).sum(1)
  kl = 0.5 * (-logvar + np.exp(logvar) + mu ** 2 - 1).sum(1)
  np.testing.assert_allclose(aux['nll'], nll, rtol=1e-4)
  np.testing.assert_allclose(aux['kl'], kl, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(loss_B, nll + beta * kl, rtol=1e-4)


@pytest.mark.parametrize('name', ['multinomial', 'gaussian', 'logistic'])
def test_likelihoods_match_dense_formulas(name):
  x = _random_csr(seed=3)
  logits = np.asarray(jax.random.normal(jax.random.key(2), x.shape)) * 3
  got = likelihoods.get(name)(jnp.asarray(logits), sparse.shard_rows(x))
  d = x.toarray()
  if name == 'multinomial':
    want = (d * _np_log_softmax(logits)).sum(1)
  elif name == 'gaussian':
    want = -0.5 * ((d - logits) ** 2).sum(1)
  else:
    p = 1 / (1 + np.exp(-logits))
    want = (d * np.log(p) + (1 - d) * np.log(1 - p)).sum(1)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_dae_forward_penalty_and_defaults():
  c = base_config()
  c.model.name = 'multdae'
  model = models.build(c, 30)
  params = model.init(jax.random.key(0))
  assert [p['w'].shape for p in params['encoder'] + params['decoder']] == [(30, 200), (200, 30)]
  x = _random_csr()
  logits = dae.score(params, sparse.shard_rows(x))
  want = _np_mlp(params['decoder'], _np_mlp(params['encoder'], _np_l2norm(x.toarray()), True))
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)
  sq = sum((np.asarray(p['w']) ** 2).sum() for p in params['encoder'] + params['decoder'])
  np.testing.assert_allclose(model.penalty(params), 0.01 / 500 * sq, rtol=1e-5)


def test_vae_architecture_and_init():
  params = models.build(base_config(), 1000).init(jax.random.key(0))
  shapes = [p['w'].shape for p in params['encoder'] + params['decoder']]
  assert shapes == [(1000, 600), (600, 400), (200, 600), (600, 1000)]
  w = np.asarray(params['encoder'][0]['w'])
  limit = np.sqrt(6 / (1000 + 600))
  assert np.abs(w).max() <= limit and np.abs(w).max() > 0.9 * limit  # Glorot uniform
  b = np.asarray(params['encoder'][0]['b'])
  assert 0.0005 < b.std() < 0.0015 and np.abs(b).max() <= 0.002  # truncated N(0, 0.001)


def test_unknown_model_is_a_clear_error():
  c = base_config()
  c.model.name = 'nosuchmodel'
  with pytest.raises(ValueError, match='unknown model'):
    models.build(c, 10)


@pytest.mark.parametrize('name', ['multinomial', 'gaussian', 'logistic'])
def test_likelihood_gradients_match_dense_autodiff(name):
  x = _random_csr(seed=4)
  logits = jax.random.normal(jax.random.key(3), x.shape) * 2
  w = jax.random.normal(jax.random.key(4), (x.shape[0],))
  rows = sparse.shard_rows(x)
  got = jax.grad(lambda l: jnp.sum(w * likelihoods.get(name)(l, rows)))(logits)
  d = jnp.asarray(x.toarray())
  dense = {'multinomial': lambda l: (d * jax.nn.log_softmax(l)).sum(1),
           'gaussian': lambda l: -0.5 * ((d - l) ** 2).sum(1),
           'logistic': lambda l: (d * jax.nn.log_sigmoid(l) + (1 - d) * jax.nn.log_sigmoid(-l)).sum(1)}
  want = jax.grad(lambda l: jnp.sum(w * dense[name](l)))(logits)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_dense_layer_gradients_match_plain_autodiff():
  p = nn.init_dense(jax.random.key(0), 7, 5)
  h = jax.random.normal(jax.random.key(1), (6, 7))
  f = lambda p, h: jnp.sum(jnp.sin(nn.dense(p, h)))
  g = lambda p, h: jnp.sum(jnp.sin(h @ p['w'] + p['b']))
  for a, b in zip(jax.tree.leaves(jax.grad(f, (0, 1))(p, h)), jax.tree.leaves(jax.grad(g, (0, 1))(p, h))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # vmapped over a leading model axis, as the beta sweep uses it
  ps = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), p)
  got = jax.vmap(jax.grad(f), (0, None))(ps, h)
  want = jax.vmap(jax.grad(g), (0, None))(ps, h)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_products_take_bf16_inputs_and_keep_float32_everywhere_else():
  """compute_dtype: the forward and both gradient products take bf16 inputs and return
  float32; logits, loss and gradients are float32; the sparse first layer stays float32."""
  x = _random_csr(n_users=16, n_items=40, density=0.3, empty_rows=())
  rows = sparse.shard_rows(x)
  params = vae.init(jax.random.key(0), 40, (16,), 4)
  key = jax.random.key(1)

  def loss(p, dtype):
    return jnp.mean(vae.loss(p, rows, key, 0.2, dtype=dtype)[0])
  assert vae.score(params, rows, dtype=jnp.bfloat16).dtype == jnp.float32
  l32, g32 = jax.value_and_grad(loss)(params, None)
  l16, g16 = jax.value_and_grad(loss)(params, jnp.bfloat16)
  assert l16.dtype == jnp.float32 and abs(float(l16) - float(l32)) < 1e-2 * abs(float(l32))
  for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g16)):
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(b, a, atol=0.05 * float(jnp.abs(a).max()) + 1e-6)
  hlo = jax.jit(jax.grad(loss), static_argnums=1).lower(params, jnp.bfloat16).as_text()
  dots = [l.rsplit(':', 1)[-1] for l in hlo.splitlines() if 'dot_general' in l]
  mixed = [d for d in dots if 'bf16' in d]
  # 3 dense layers after the sparse one, 3 products each; the rest are bias sums (f32)
  assert len(mixed) == 9, dots
  assert all(d.count('bf16') == 2 and d.endswith('xf32>') for d in mixed), mixed
  # the float32 path is untouched: no convert to bf16 anywhere
  assert 'bf16' not in jax.jit(jax.grad(loss), static_argnums=1).lower(params, None).as_text()
