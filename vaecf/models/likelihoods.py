"""Per-user log-likelihoods log p(x_u | logits_u) for a binary click row, from sparse x.

Each is written as (sum over the user's nonzeros) + (sum over all items of a term
that does not depend on x), so the dense x is never built; for binary x these
equal the dense formulas of docs/protocol.md exactly.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vaecf.models.nn import gather_logits
from vaecf.sparse import SparseRows


def _per_user_nnz_sum(values, x: SparseRows):
  return jax.ops.segment_sum(values, x.rows, num_segments=x.n_users, indices_are_sorted=True)


@jax.custom_vjp
def multinomial(logits_BxI, x: SparseRows):
  """sum_i x_ui log softmax(logits_u)_i."""
  return _multinomial_fwd(logits_BxI, x)[0]


def _multinomial_fwd(logits_BxI, x: SparseRows):
  # Keeps exp(logits - max) for the backward pass: autodiff of logsumexp would
  # recompute the [B, I] exponentials, a tenth of an ML-20M step on a CPU.
  max_Bx1 = jax.lax.stop_gradient(logits_BxI.max(axis=1, keepdims=True))
  exp_BxI = jnp.exp(logits_BxI - max_Bx1)
  sum_Bx1 = exp_BxI.sum(axis=1, keepdims=True)
  lse_B = (max_Bx1 + jnp.log(sum_Bx1))[:, 0]
  n_B = _per_user_nnz_sum(x.vals, x)
  picked_B = _per_user_nnz_sum(x.vals * gather_logits(logits_BxI, x), x)
  return picked_B - n_B * lse_B, (exp_BxI, 1.0 / sum_Bx1, n_B, x)


def _multinomial_bwd(res, g_B):
  exp_BxI, inv_sum_Bx1, n_B, x = res
  d_BxI = -(g_B * n_B)[:, None] * inv_sum_Bx1 * exp_BxI  # -n g softmax
  g_nnz = jnp.take(g_B, x.rows, mode='fill', fill_value=0.0) * x.vals
  return d_BxI.at[x.rows, x.cols].add(g_nnz, mode='drop'), None


multinomial.defvjp(_multinomial_fwd, _multinomial_bwd)


def gaussian(logits_BxI, x: SparseRows):
  """-1/2 sum_i (x_ui - logits_ui)^2: unit variance, no confidence weights."""
  l = gather_logits(logits_BxI, x)
  cross = _per_user_nnz_sum(x.vals * (x.vals - 2.0 * l), x)  # x^2 - 2 x l on nonzeros
  return -0.5 * (jnp.sum(jnp.square(logits_BxI), axis=1) + cross)


def logistic(logits_BxI, x: SparseRows):
  """sum_i x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)) = sum_nnz x l - sum_i softplus(l)."""
  l = gather_logits(logits_BxI, x)
  return _per_user_nnz_sum(x.vals * l, x) - jnp.sum(jax.nn.softplus(logits_BxI), axis=1)


LIKELIHOODS = {'multinomial': multinomial, 'gaussian': gaussian, 'logistic': logistic}


def get(name: str):
  try:
    return LIKELIHOODS[name]
  except KeyError:
    raise ValueError(f'unknown likelihood {name!r}; choose from {sorted(LIKELIHOODS)}') from None
