"""H+Vamp (Gated) (vaecf/models/hvamp.py): the VampPrior and the Gaussian log-densities against
SciPy, the per-user loss and the test-time scores against a NumPy transcription of the
authors' forward pass, AdamNormGrad against a NumPy transcription of theirs, the init, one
step on 1 and 4 devices, and a short run served through the unchanged Recommender."""
import numpy as np
import pytest
from scipy import special, stats

import jax
import jax.numpy as jnp

from vaecf import checkpoints, distributed, input_pipeline, models, serving, steps, train
from vaecf.data import load_split
from test_train import small_config

from vaecf.models import hvamp

NET = dict(hidden=16, n_layers=2, z1=6, z2=5, n_pseudo=7)


def hvamp_config(tmp_path, **train_kw):
  c = small_config(tmp_path, **train_kw)
  c.model.name = 'hvamp'
  for k, v in models.settings('hvamp').model.items():  # its own keys, declared defaults
    c.model[k] = v
  c.model.hidden_dims = (NET['hidden'],) * NET['n_layers']
  c.model.latent_dim = NET['z1']
  c.model.z2_dim = NET['z2']
  c.model.n_pseudo_inputs = NET['n_pseudo']
  # All 483 training users in one batch: one step an epoch, one shape to compile.
  c.train.batch_size = 500
  c.train.learning_rate = 5e-4
  c.train.epochs = 2
  c.train.anneal_cap = 0.3
  c.train.total_anneal_steps = 10
  return c


@pytest.fixture(scope='module')
def split(tmp_path_factory):
  return load_split(hvamp_config(tmp_path_factory.mktemp('data')).data)[0]


def test_the_ml1m_config_is_valid_and_warms_up_over_100_epochs():
  from vaecf import presets
  from vaecf.config import validate
  c = presets.compose('hvamp', 'ml-1m')  # configs/hvamp.py:ml-1m
  validate(c)
  sched = steps.schedule_from_config(c)
  per_epoch = -(-4834 // c.train.batch_size)  # the ml-1m preset's training users
  beta = lambda epoch: float(steps.beta_at(np.int32(epoch * per_epoch), sched))
  assert beta(50) == pytest.approx(0.15, rel=1e-3)
  assert beta(99) == pytest.approx(0.297, rel=1e-3) and beta(100) == pytest.approx(0.3, rel=1e-4)
  assert beta(200) == pytest.approx(0.3, rel=1e-6)


def f32(a):
  return jnp.asarray(a, jnp.float32)


def test_vamp_prior_and_gaussian_log_densities_match_scipy():
  rng = np.random.default_rng(0)
  b, k, d = 6, 4, 3
  z = rng.normal(size=(b, d)) * 2
  means, logvars = rng.normal(size=(k, d)), rng.normal(size=(k, d))
  # log (1/K) sum_k N(z; m_k, diag exp(lv_k)), each component a full SciPy density.
  comps = np.stack([stats.multivariate_normal(means[j], np.diag(np.exp(logvars[j]))).logpdf(z)
                    for j in range(k)], axis=1)
  want = special.logsumexp(comps, axis=1) - np.log(k)
  got = hvamp.vamp_log_prior(f32(z), f32(means), f32(logvars))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # One component: the prior is that Gaussian (log 1 = 0).
  np.testing.assert_allclose(hvamp.vamp_log_prior(f32(z), f32(means[:1]), f32(logvars[:1])),
                             comps[:, 0], rtol=1e-5, atol=1e-5)
  # Its hand-written gradient: against central differences of the SciPy density (float64).
  g = rng.normal(size=b)
  got = jax.grad(lambda *a: jnp.sum(f32(g) * hvamp.vamp_log_prior(*a)), argnums=(0, 1, 2))(
      f32(z), f32(means), f32(logvars))

  def numeric(i):
    args, h = [z, means, logvars], 1e-6
    out = np.zeros_like(args[i])
    for idx in np.ndindex(out.shape):
      lo, hi = ([a.copy() for a in args] for _ in range(2))
      lo[i][idx] -= h
      hi[i][idx] += h
      f = lambda zz, mm, ll: np.sum(g * (special.logsumexp(stats.norm.logpdf(
          zz[:, None], mm[None], np.exp(0.5 * ll)[None]).sum(-1), axis=1) - np.log(k)))
      out[idx] = (f(*hi) - f(*lo)) / (2 * h)
    return out
  for i in range(3):
    np.testing.assert_allclose(got[i], numeric(i), rtol=1e-4, atol=1e-4)
  mu, lv = rng.normal(size=(b, d)), rng.normal(size=(b, d))
  np.testing.assert_allclose(hvamp.log_normal_diag(f32(z), f32(mu), f32(lv)),
                             stats.norm.logpdf(z, mu, np.exp(0.5 * lv)).sum(1),
                             rtol=1e-5, atol=1e-5)


def _np_forward(p, x_dense, pseudo, eps2, eps1, gated=True):
  """models/HVamp.py forward + calculate_loss (multinomial), NumPy float64, given eps."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  sig = lambda a: 1 / (1 + np.exp(-a))
  lin = lambda q, a: a @ q['kernel'] + q['bias']
  layer = lambda q, a: (lin(q['linear'], a) * sig(lin(q['g'], a)) if gated
                        else np.tanh(lin(q['linear'], a)))
  heads = lambda n, h: (lin(p[f'{n}_mean'], h), np.clip(lin(p[f'{n}_logvar'], h), -12, 4))

  def q_z2(a):
    return heads('q_z2', layer(p['q_z2_layers_1'], layer(p['q_z2_layers_0'], a)))

  xn = x_dense / np.maximum(np.linalg.norm(x_dense, axis=1, keepdims=True), 1e-12)
  mu2, lv2 = q_z2(xn)
  z2 = mu2 + eps2 * np.exp(0.5 * lv2)
  h = np.concatenate([layer(p['q_z1_layers_x'], xn), layer(p['q_z1_layers_z2'], z2)], 1)
  mu1, lv1 = heads('q_z1', layer(p['q_z1_layers_joint_0'], h))
  z1 = mu1 + eps1 * np.exp(0.5 * lv1)
  pmu1, plv1 = heads('p_z1', layer(p['p_z1_layers_1'], layer(p['p_z1_layers_0'], z2)))
  h = np.concatenate([layer(p['p_x_layers_z1'], z1), layer(p['p_x_layers_z2'], z2)], 1)
  logits = lin(p['p_x_mean'], layer(p['p_x_layers_joint_0'], h))
  nll = -(x_dense * special.log_softmax(logits, axis=1)).sum(1)
  pm, plv = q_z2(pseudo)
  log_p_z2 = special.logsumexp(
      stats.norm.logpdf(z2[:, None, :], pm[None], np.exp(0.5 * plv)[None]).sum(-1),
      axis=1) - np.log(len(pseudo))
  kl = (stats.norm.logpdf(z1, mu1, np.exp(0.5 * lv1)).sum(1)
        + stats.norm.logpdf(z2, mu2, np.exp(0.5 * lv2)).sum(1)
        - stats.norm.logpdf(z1, pmu1, np.exp(0.5 * plv1)).sum(1) - log_p_z2)
  return nll, kl, logits


def _test_params(h, key):
  """Init params pushed so every clip acts: logvars past [-12, 4], pseudo-inputs past [0, 1]."""
  p = h.init(key)
  rng = np.random.default_rng(1)
  for name in ('q_z2_logvar', 'q_z1_logvar', 'p_z1_logvar'):
    n = p[name]['bias'].shape[0]
    p[name] = {**p[name], 'bias': f32(np.linspace(-20.0, 10.0, n))}
  p['means'] = f32(rng.normal(0.5, 0.8, size=p['means'].shape))
  return p


@pytest.mark.parametrize('gated', [True, False])
def test_loss_and_scores_match_the_authors_forward_pass(split, gated):
  h = hvamp.HVamp(split.n_items, gated=gated, **NET)
  p = _test_params(h, jax.random.key(0))
  rows = split.train[:9]
  mesh = distributed.make_mesh(jax.devices()[:1])
  x = input_pipeline.global_batch(rows, mesh, 9)
  rng = np.random.default_rng(2)
  eps2, eps1 = rng.normal(size=(9, NET['z2'])), rng.normal(size=(9, NET['z1']))
  pseudo = jnp.clip(p['means'], 0.0, 1.0)
  assert 0 < float(jnp.mean(pseudo == 0.0)) and 0 < float(jnp.mean(pseudo == 1.0))
  v = hvamp.nn.normalized_input(x)
  beta = 0.3
  loss, aux = h.terms(p, x, v, v, pseudo, f32(eps2), f32(eps1), beta)
  want_nll, want_kl, want_logits = _np_forward(p, rows.toarray(), np.asarray(pseudo), eps2,
                                               eps1, gated)
  # The clips bite: some logvars sit at -12 or 4 (else they would not be tested).
  mu2, lv2 = h._apply(p, h.net.q_z2, (x, v))
  clipped = (lv2 == -12.0) | (lv2 == 4.0)
  assert bool(jnp.any(clipped)) and not bool(jnp.all(clipped))
  np.testing.assert_allclose(aux['nll'], want_nll, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(aux['kl'], want_kl, rtol=1e-4, atol=1e-2)
  np.testing.assert_allclose(loss, want_nll + beta * want_kl, rtol=1e-4, atol=1e-2)
  # Test time: the posterior means, no dropout (eps = 0 in the same forward).
  _, _, want_scores = _np_forward(p, rows.toarray(), np.asarray(pseudo), 0 * eps2, 0 * eps1,
                                  gated)
  np.testing.assert_allclose(h.score(p, x), want_scores, rtol=1e-4, atol=1e-4)


def test_loss_dropout_and_draws(split):
  h = hvamp.HVamp(split.n_items, **NET)
  p = h.init(jax.random.key(0))
  mesh = distributed.make_mesh(jax.devices()[:1])
  x = input_pipeline.global_batch(split.train[:9], mesh, 9)
  a, _ = h.loss(p, x, jax.random.key(3), 0.2, dropout_rate=0.5)
  b, _ = h.loss(p, x, jax.random.key(3), 0.2, dropout_rate=0.5)
  c, _ = h.loss(p, x, jax.random.key(4), 0.2, dropout_rate=0.5)
  assert a.shape == (9,) and np.isfinite(a).all()
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  # Pseudo-inputs through nn.Dropout(0.5): each entry 0 or 2u, about half kept.
  u = jnp.clip(p['means'], 0, 1)
  d = hvamp.dropout_dense(jax.random.key(5), u, 0.5)
  kept = d != 0
  np.testing.assert_allclose(d[kept], 2 * u[kept], rtol=1e-6)
  assert 0.4 < float(kept.mean()) < 0.6
  np.testing.assert_array_equal(hvamp.dropout_dense(None, u, 0.5), u)


def test_init_is_the_authors(split):
  h = hvamp.HVamp(split.n_items, **NET)
  p = h.init(jax.random.key(0))
  w = np.asarray(p['q_z2_layers_0']['linear']['kernel'])  # [I, H]: he_init N(0, sqrt(2/I))
  assert abs(w.std() / np.sqrt(2 / split.n_items) - 1) < 0.05 and abs(w.mean()) < 0.01 * w.std()
  assert np.abs(w).max() > 3.5 * w.std()  # not truncated at 2 sigma
  bias = np.asarray(p['q_z2_layers_0']['g']['bias'])
  assert np.abs(bias).max() <= 1 / np.sqrt(split.n_items)
  m = np.asarray(p['means'])
  assert m.shape == (NET['n_pseudo'], split.n_items)
  assert abs(m.mean() - 0.05) < 1e-3 and abs(m.std() - 0.01) < 1e-3


def test_adam_norm_grad_matches_the_authors_optimizer():
  rng = np.random.default_rng(0)
  params = {'a': rng.normal(size=(3, 4)), 'b': rng.normal(size=(5,))}
  grads = [{k: rng.normal(size=v.shape) * s for k, v in params.items()}
           for s in (1.0, 30.0, 0.01)]
  lr, b1, b2, eps = 5e-4, 0.9, 0.999, 1e-8
  want, m, v = dict(params), {k: 0 * a for k, a in params.items()}, {k: 0 * a for k, a in
                                                                    params.items()}
  for t, g in enumerate(grads, 1):  # utils/optimizer.py AdamNormGrad.step, per tensor
    for k in params:
      gk = g[k] / (np.linalg.norm(g[k]) + 1e-7)
      m[k] = b1 * m[k] + (1 - b1) * gk
      v[k] = b2 * v[k] + (1 - b2) * gk * gk
      step = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
      want[k] = want[k] - step * m[k] / (np.sqrt(v[k]) + eps)
  tx = hvamp.adam_norm_grad(lr)
  p = jax.tree.map(f32, params)
  state = tx.init(p)
  for g in grads:
    u, state = tx.update(jax.tree.map(f32, g), state, p)
    p = jax.tree.map(lambda a, b: a + b, p, u)
  for k in params:
    np.testing.assert_allclose(p[k], want[k], rtol=1e-6, atol=1e-7)
  assert int(state.count) == 3


def test_one_step_on_four_devices_equals_one_device(tmp_path, split):
  assert jax.device_count() == 4, 'conftest sets 4 fake CPU devices'
  c = hvamp_config(tmp_path)
  model = models.build(c, split.n_items)
  assert model.uses_beta and set(model.optimizers) == {'adam_norm_grad'}
  sched = steps.schedule_from_config(c)
  out = {}
  for n_dev in (1, 4):
    mesh = distributed.make_mesh(jax.devices()[:n_dev])
    state = steps.init_state(model, None, jax.random.key(0))
    step = steps.make_train_step(model, None, mesh, seed=3, donate=False)
    rows = split.train[:7]  # 7 users: padding on 4 devices
    for _ in range(2):
      state, m = step(state, input_pipeline.global_batch(rows, mesh, -(-7 // n_dev)), sched)
    out[n_dev] = float(m['loss']), float(m['kl']), jax.device_get(state['params'])
  assert out[1][0] == pytest.approx(out[4][0], rel=1e-5)
  assert out[1][1] == pytest.approx(out[4][1], rel=1e-4, abs=1e-3)
  for a, b in zip(jax.tree.leaves(out[1][2]), jax.tree.leaves(out[4][2])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_trains_and_serves_through_the_recommender(tmp_path, split):
  c = hvamp_config(tmp_path)
  res = train.train_and_evaluate(c, tmp_path / 'run', split=split)
  assert res['model'] == 'hvamp' and np.isfinite(res['test']['ndcg@100'])
  state, _ = checkpoints.load_state(tmp_path / 'run')
  assert int(state['step']) == 2
  assert int(state['opt_state']['adam_norm_grad']['count']) == 2  # AdamNormGradState
  assert state['params']['means'].shape == (NET['n_pseudo'], split.n_items)

  rec = serving.from_workdir(tmp_path / 'run', trust_code=True)
  hist = [int(i) for i in rec.item_ids[:5]]
  got = rec.recommend(hist, n=10)
  assert len(got.items) == 10 and not set(got.items) & set(hist)
  empty = rec.recommend([], n=5)
  assert empty.fallback and len(empty.items) == 5 and np.isfinite(rec.fallback).all()
  x, _ = rec.encode([hist])
  exported = serving.load_exported(serving.export(rec, tmp_path / 'export', platforms=('cpu',)))
  np.testing.assert_allclose(exported.scores(x), rec.scores(x), rtol=1e-5, atol=1e-5)
  assert exported.recommend(hist, n=10).items == got.items


@pytest.mark.slow
def test_a_sweep_over_the_number_of_pseudo_inputs_runs_one_model_per_count(tmp_path, split):
  # The count is a shape, so each value is its own group (vaecf.sweep_groups): how the
  # count is chosen on validation. Beta is 0 at the first step, so the prior (and the
  # count) only acts from the second.
  from vaecf import sweep_groups
  c = hvamp_config(tmp_path)
  c.train.epochs = 3
  c.sweep.grid = 'n_pseudo_inputs=4,7'
  res = sweep_groups.train_groups(c, tmp_path / 'groups', split=split)
  assert [m['point'] for m in res['models']] == [{'n_pseudo_inputs': 4.0},
                                                 {'n_pseudo_inputs': 7.0}]
  single = train.train_and_evaluate(c, tmp_path / 'single', split=split)  # 7, as in NET
  assert res['models'][1]['val_ndcg@100'] == pytest.approx(single['val_ndcg@100'], rel=1e-5)
  from vaecf import sweep
  from vaecf.workdir import load_config, read_metrics
  for m, count in zip(res['models'], (4, 7)):
    params = sweep.restore_best_params(m['workdir'], load_config(m['workdir']),
                                       split.n_items, distributed.make_mesh())
    means = [a for path, a in jax.tree_util.tree_leaves_with_path(params)
             if 'means' in jax.tree_util.keystr(path)]
    assert [a.shape for a in means] == [(1, count, split.n_items)]
  losses = [read_metrics(m['workdir'])[-1]['train_loss'] for m in res['models']]
  assert losses[0] != losses[1]  # the prior differs once beta is above 0
