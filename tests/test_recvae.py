"""RecVAE (vaecf/models/recvae.py): prior and KL against SciPy, the encoder against a NumPy
transcription of the authors' forward pass, the alternating schedule, the prior refresh,
resumption, and serving through the unchanged Recommender and export."""
import numpy as np
import pytest
from scipy import special, stats

import jax
import jax.numpy as jnp

from vaecf import checkpoints, distributed, input_pipeline, models, serving, steps, sweep, train
from vaecf.data import load_split
from test_train import small_config

from vaecf.models import recvae


def recvae_config(tmp_path, **train_kw):
  c = small_config(tmp_path, **train_kw)
  c.model.name = 'recvae'
  for k, v in models.settings('recvae').model.items():  # its own keys, declared defaults
    c.model[k] = v
  c.model.hidden_dims = (16,) * 5
  c.model.latent_dim = 8
  c.model.gamma = 0.005
  # All 490 training users in one batch: one step per pass, few shapes to compile.
  c.train.batch_size = 500
  c.train.learning_rate = 5e-4
  c.train.epochs = 2
  return c


@pytest.fixture(scope='module')
def split(tmp_path_factory):
  return load_split(recvae_config(tmp_path_factory.mktemp('data')).data)[0]


def test_composite_prior_and_kl_match_scipy():
  rng = np.random.default_rng(0)
  b, k = 6, 5
  z, mu, post_mu = (rng.normal(size=(b, k)) * 2 for _ in range(3))
  logvar, post_logvar = (rng.normal(size=(b, k)) for _ in range(2))
  # Per coordinate: log(3/20 N(z; 0, 1) + 3/4 N(z; post_mu, post_var) + 1/10 N(z; 0, e^10)).
  comps = np.stack([stats.norm.logpdf(z, 0, 1),
                    stats.norm.logpdf(z, post_mu, np.exp(0.5 * post_logvar)),
                    stats.norm.logpdf(z, 0, np.exp(0.5 * 10.0))], -1)
  want_prior = special.logsumexp(comps, axis=-1, b=np.array([3 / 20, 3 / 4, 1 / 10]))
  want_kl = np.sum(stats.norm.logpdf(z, mu, np.exp(0.5 * logvar)) - want_prior, axis=1)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  got_prior = recvae.composite_log_prior(f32(z), f32(post_mu), f32(post_logvar))
  got_kl = recvae.kl_estimate(f32(z), f32(mu), f32(logvar), f32(post_mu), f32(post_logvar))
  np.testing.assert_allclose(got_prior, want_prior, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_kl, want_kl, rtol=1e-5, atol=1e-4)


def _numpy_encoder(p, x_dense, eps=0.1):
  """master's Encoder.forward (eval mode) on a dense batch, in NumPy float64."""
  x = x_dense / np.sqrt((x_dense ** 2).sum(-1, keepdims=True))
  swish = lambda a: a / (1 + np.exp(-a))
  def ln(a, q):
    m, v = a.mean(-1, keepdims=True), a.var(-1, keepdims=True)
    return (a - m) / np.sqrt(v + eps) * q['scale'] + q['bias']
  f64 = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  hs = []
  for k in range(1, 6):
    lin = f64[f'fc{k}']
    pre = (x if k == 1 else hs[-1]) @ lin['kernel'] + lin['bias'] + sum(hs)
    hs.append(ln(swish(pre), f64[f'ln{k}']))
  head = lambda q: hs[-1] @ q['kernel'] + q['bias']
  return head(f64['fc_mu']), head(f64['fc_logvar'])


def test_encoder_matches_the_authors_forward_pass(split):
  r = recvae.RecVAE(split.n_items, hidden=16, n_layers=5, latent=8)
  params = r.init(jax.random.key(0))
  rows = split.train[:7]
  mesh = distributed.make_mesh(jax.devices()[:1])
  mu, logvar = r.encode(params['encoder'], input_pipeline.global_batch(rows, mesh, 7))
  want_mu, want_logvar = _numpy_encoder(params['encoder'], rows.toarray())
  np.testing.assert_allclose(mu, want_mu, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(logvar, want_logvar, rtol=1e-4, atol=1e-5)
  # PyTorch nn.Linear's init: U(+-1/sqrt(fan_in)) for the weights and the bias.
  bound = 1 / np.sqrt(split.n_items)
  for leaf in (params['encoder']['fc1']['kernel'], params['encoder']['fc1']['bias']):
    assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.9 * bound


def _equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_each_phase_updates_only_its_params_and_the_refresh_copies_the_encoder(tmp_path,
                                                                               split):
  c = recvae_config(tmp_path)
  model = models.build(c, split.n_items)
  assert [(p.name, p.params, p.passes) for p in model.phases] == [
      ('encoder', ('encoder',), 3), ('decoder', ('decoder',), 1)]
  mesh = distributed.make_mesh()
  state = steps.init_state(model, steps.make_optimizer(c), jax.random.key(0))
  # Before the first refresh the prior is an encoder of its own (master).
  assert not _equal(state['model_state']['prior'], state['params']['encoder'])
  fns = steps.make_phase_steps(model, steps.make_optimizer(c), mesh, c.train.seed,
                               donate=False)
  batch = input_pipeline.global_batch(split.train[:64], mesh, 16)
  sched = steps.schedule_from_config(c)
  for name, other in (('encoder', 'decoder'), ('decoder', 'encoder')):
    new, metrics = fns[name](state, batch, sched)
    assert np.isfinite(float(metrics['loss']))
    assert _equal(new['params'][other], state['params'][other])
    assert _equal(new['opt_state'][other], state['opt_state'][other])
    assert not _equal(new['params'][name], state['params'][name])
    assert int(new['opt_state'][name][0].count) == 1
    assert _equal(new['model_state'], state['model_state'])
    state = new
  refreshed = steps.make_after_fn(model.phases[0])(state)
  assert _equal(refreshed['model_state']['prior'], state['params']['encoder'])
  assert _equal(refreshed['params'], state['params'])


def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path, split):
  c = recvae_config(tmp_path)
  full = train.train_and_evaluate(c, tmp_path / 'full', split=split)
  train.train_and_evaluate(c, tmp_path / 'resumed', split=split, stop_after_epoch=1)
  resumed = train.train_and_evaluate(c, tmp_path / 'resumed', split=split)
  assert resumed['test'] == full['test']
  a, b = (checkpoints.load_state(tmp_path / w)[0] for w in ('full', 'resumed'))
  assert set(a) == {'step', 'params', 'opt_state', 'model_state'}
  assert int(a['step']) == 2 * 4  # 2 epochs of 3 encoder + 1 decoder passes of one batch
  assert _equal(a, b)
  # The last refresh (epoch 2) copied the encoder, which the decoder pass left alone.
  assert _equal(a['model_state']['prior'], a['params']['encoder'])

  rec = serving.from_workdir(tmp_path / 'full', trust_code=True)
  hist = [int(i) for i in rec.item_ids[:5]]
  got = rec.recommend(hist, n=10)
  assert len(got.items) == 10 and not set(got.items) & set(hist)
  assert rec.recommend([], n=5).fallback
  x, _ = rec.encode([hist])
  exported = serving.load_exported(serving.export(rec, tmp_path / 'export', platforms=('cpu',)))
  np.testing.assert_allclose(exported.scores(x), rec.scores(x), rtol=1e-5, atol=1e-5)
  assert exported.recommend(hist, n=10).items == got.items
  np.testing.assert_array_equal(exported.fallback, rec.fallback)


def test_a_gamma_sweep_of_the_alternating_model_equals_its_single_runs(tmp_path, split):
  """The vmapped sweep runs every phase, and the prior refresh, per model: model m of a
  sweep over RecVAE's traced gamma is the single run at that gamma."""
  c = recvae_config(tmp_path)
  c.sweep.grid = 'gamma=0.005,0.5'
  res = sweep.train_sweep(c, tmp_path / 'sweep', split=split)
  params_M = sweep.restore_best_params(tmp_path / 'sweep', c, split.n_items,
                                       distributed.make_mesh())
  for m, point in enumerate(sweep.grid_points(c)):
    single = train.train_and_evaluate(sweep.model_config(c, point), tmp_path / f's{m}',
                                      split=split)
    got = res['models'][m]
    assert got['point'] == point and got['best_epoch'] == single['best_epoch']
    assert got['test'] == pytest.approx(single['test'], rel=1e-4, abs=1e-6)
    best = checkpoints.load_state(tmp_path / f's{m}', single['best_epoch'])[0]['params']
    for x, y in zip(jax.tree.leaves(jax.tree.map(lambda a: a[m], params_M)),
                    jax.tree.leaves(best), strict=True):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
  assert res['models'][0]['test'] != res['models'][1]['test']  # gamma really differs


def test_learning_rate_is_not_sweepable_for_a_model_with_its_own_optimizers(tmp_path, split):
  c = recvae_config(tmp_path)
  c.sweep.grid = 'learning_rate=1e-3,1e-4'
  with pytest.raises(ValueError, match='declares its own optimizers'):
    sweep.train_sweep(c, tmp_path / 'sweep', split=split)
