"""The fused Adam equals optax.adam + optax.apply_updates, step after step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vaecf import optim


def _tree(key):
  k = jax.random.split(key, 4)
  return {'dense': {'w': jax.random.normal(k[0], (7, 5)), 'b': jax.random.normal(k[1], (5,))},
          'zeros': jnp.zeros((3, 4)),  # a leaf whose gradients stay zero: nu = 0, eps matters
          'layers': [jax.random.normal(k[2], (11,)), 1e-3 * jax.random.normal(k[3], (2, 2))]}


def _grads(params, key):
  leaves, tdef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  g = [jax.random.normal(k, p.shape) * 10.0 ** jax.random.randint(k, (), -4, 2)
       for k, p in zip(keys, leaves)]
  g = jax.tree.unflatten(tdef, g)
  g['zeros'] = jnp.zeros_like(params['zeros'])
  return g


def _close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize('way', ['adam_step', 'transformation'])
def test_fused_adam_equals_optax_adam(way):
  lr, kwargs = 3e-3, dict(b1=0.8, b2=0.99, eps=1e-7)
  ref = optax.adam(lr, **kwargs)
  params = _tree(jax.random.key(0))
  ref_p, ref_s = params, ref.init(params)
  p = jax.tree.map(jnp.copy, params)
  s = optim.init(p)
  assert jax.tree.structure(s) == jax.tree.structure(ref_s)  # checkpoints interchange

  ref_step = jax.jit(lambda p, g, s: (lambda u, s: (optax.apply_updates(p, u), s))(
      *ref.update(g, s, p)))
  if way == 'adam_step':
    step = jax.jit(lambda p, g, s: optim.adam_step(p, g, s, lr, **kwargs), donate_argnums=(0, 2))
  else:
    tx = optim.adam(lr, **kwargs)
    step = jax.jit(lambda p, g, s: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(g, s, p)))
  for i in range(6):
    g = _grads(params, jax.random.key(i + 1))
    ref_p, ref_s = ref_step(ref_p, g, ref_s)
    p, s = step(p, g, s)
    _close(p, ref_p)
    _close(s, ref_s)
  assert int(s[0].count) == 6
  np.testing.assert_array_equal(np.asarray(p['zeros']), 0.0)


def test_default_hyperparameters_match_optax():
  params = _tree(jax.random.key(3))
  g = _grads(params, jax.random.key(4))
  u_ref, _ = optax.adam(1e-3).update(g, optax.adam(1e-3).init(params), params)
  p, _ = optim.adam_step(params, g, optim.init(params), 1e-3)
  _close(p, optax.apply_updates(params, u_ref))
