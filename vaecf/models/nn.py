"""Layer pieces shared by the models: init, dense layers, the sparse first layer.

Parameters are plain dicts {'w': [in, out], 'b': [out]} so any model is a pytree
that optax, orbax and jax.vmap handle without adapters.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from vaecf.common import Params
from vaecf.sparse import SparseRows


def init_dense(key, d_in: int, d_out: int, bias_std: float = 0.001) -> Params:
  """Glorot-uniform weights, truncated-normal(0.001) biases, as the authors' code."""
  kw, kb = jax.random.split(key)
  w = jax.nn.initializers.glorot_uniform()(kw, (d_in, d_out), jnp.float32)
  b = bias_std * jax.random.truncated_normal(kb, -2.0, 2.0, (d_out,), jnp.float32)
  return {'w': w, 'b': b}


def init_mlp(key, dims: Sequence[int]) -> list[Params]:
  keys = jax.random.split(key, len(dims) - 1)
  return [init_dense(k, a, b) for k, a, b in zip(keys, dims[:-1], dims[1:])]


def init_autoencoder(key, n_items: int, hidden_dims, latent_dim: int, code_dim: int) -> Params:
  """Encoder [I, *hidden, code_dim] and mirrored decoder [K, *reversed(hidden), I]."""
  k_enc, k_dec = jax.random.split(key)
  return {'encoder': init_mlp(k_enc, [n_items, *hidden_dims, code_dim]),
          'decoder': init_mlp(k_dec, [latent_dim, *reversed(hidden_dims), n_items])}


def add_bias(h_BxD, b_D):
  """h + b, with the bias gradient computed as a matmul (see _add_bias_bwd)."""
  # Adding a zero row of h first gives b h's device variance inside shard_map, so
  # the custom rule's output types match; JAX then sums b's gradient over devices.
  return _add_bias(h_BxD, b_D + jnp.zeros_like(h_BxD[0]))


@jax.custom_vjp
def _add_bias(h_BxD, b_D):
  return h_BxD + b_D


def _add_bias_fwd(h_BxD, b_D):
  return h_BxD + b_D, None


def _add_bias_bwd(_, g_BxD):
  # The bias gradient as a matmul with ones: XLA:CPU's default (YNNPACK) lowering
  # of a column sum took 140 ms for [500, 20108], the matmul takes 4 ms.
  return g_BxD, jnp.ones((g_BxD.shape[0],), g_BxD.dtype) @ g_BxD


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def dense_dims(p: Params) -> tuple[int, int]:
  """(d_in, d_out) of a dense layer's parameters."""
  return p['w'].shape


def matmul(x, w, dtype=None):
  """x @ w; with `dtype` (e.g. bfloat16), a mixed-precision product (_mixed_matmul).

  `dtype=None` is the plain float32 product, exactly as before.
  """
  if dtype is None:
    return x @ w
  x = x.astype(jnp.float32)
  # As in add_bias: adding zeros of x's gives w x's device variance inside shard_map,
  # so the rule's per-device weight gradient has w's type; JAX sums it over devices.
  w = w.astype(jnp.float32) + jnp.zeros_like(x[:1, :1])
  return _mixed_matmul(x, w, jnp.dtype(dtype))


def _dot(a, b, contract):
  return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mixed_matmul(x, w, dtype):
  """float32 x @ w with inputs rounded to `dtype` and float32 accumulation and output.

  Autodiff of such a dot would run both backward products on float32 operands (the
  cotangent stays float32) and round the weight gradient to `dtype`; this rule casts
  the cotangent instead, so all three products take `dtype` inputs (tensor cores) and
  return float32 gradients.
  """
  return _mixed_matmul_fwd(x, w, dtype)[0]


def _mixed_matmul_fwd(x, w, dtype):
  xl, wl = x.astype(dtype), w.astype(dtype)
  return _dot(xl, wl, ((1,), (0,))), (xl, wl)


def _mixed_matmul_bwd(dtype, res, g):
  xl, wl = res
  gl = g.astype(dtype)
  return _dot(gl, wl, ((1,), (1,))), _dot(xl, gl, ((0,), (0,)))


_mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


def dense(p: Params, x, dtype=None):
  """x @ w + b in float32; `dtype` rounds the product's inputs (see `matmul`)."""
  return add_bias(matmul(x, p['w'], dtype).astype(jnp.float32), p['b'])


def mlp(layers: Sequence[Params], h, *, final_activation: bool = False, dtype=None):
  """tanh between layers (and after the last when asked), as the paper's networks."""
  for i, p in enumerate(layers):
    h = dense(p, h, dtype)
    if i < len(layers) - 1 or final_activation:
      h = jnp.tanh(h)
  return h


def keyed_uniform(key, a, b):
  """U[0,1) per (a, b) pair: the same draw whatever the batch layout or sharding."""
  ab = a.astype(jnp.uint32) * jnp.uint32(0x9E3779B1) + b.astype(jnp.uint32)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, ab.reshape(-1))
  return jax.vmap(jax.random.uniform)(keys).reshape(a.shape)


def normalized_input(x: SparseRows, key=None, dropout_rate: float = 0.0):
  """Per-nonzero input values after row L2-normalisation and inverted dropout.

  Dropout on the zero entries of a dense input changes nothing, so dropping
  nonzeros is the paper's input dropout. An empty row stays zero (no NaN).
  """
  n = x.n_users
  sq = jax.ops.segment_sum(x.vals * x.vals, x.rows, num_segments=n, indices_are_sorted=True)
  inv_norm = jax.lax.rsqrt(jnp.maximum(sq, 1e-12))  # tf.nn.l2_normalize's epsilon
  v = x.vals * jnp.take(inv_norm, x.rows, mode='fill', fill_value=0.0)
  # A traced rate (a swept hyperparameter) always draws the mask; rate 0 keeps every input.
  if key is not None and (isinstance(dropout_rate, jax.Array) or dropout_rate > 0.0):
    pos = jnp.take(x.user_pos, x.rows, mode='fill', fill_value=0)
    keep = keyed_uniform(key, pos, x.cols) >= dropout_rate
    v = jnp.where(keep, v / (1.0 - dropout_rate), 0.0)
  return v


def sparse_dense(p: Params, x: SparseRows, values, dtype=None):
  """values-weighted sum of rows of W (a gather and a segment sum) plus bias.

  Equals dense_input @ W + b without ever building the dense users x items input.
  It stays float32 whatever `dtype`: it is no matmul (no tensor cores to gain), and
  in a low precision its gradient would sum a popular item's rows over the batch's
  users in that precision.
  """
  del dtype
  rows_NxH = jnp.take(p['w'], x.cols, axis=0) * values[:, None]
  h = jax.ops.segment_sum(rows_NxH, x.rows, num_segments=x.n_users, indices_are_sorted=True)
  return add_bias(h, p['b'])


def dense_input_layer(p: Params, x: SparseRows, values, dtype=None):
  """The same layer from a dense [B, I] input built on device (the classic way).

  Kept for benchmarks and for data dense enough that a plain matmul wins.
  """
  n_items = p['w'].shape[0]
  dense_BxI = jnp.zeros((x.n_users, n_items), jnp.float32).at[x.rows, x.cols].add(
      values, mode='drop')
  return dense(p, dense_BxI, dtype)


def first_layer(kind: str):
  if kind == 'sparse':
    return sparse_dense
  if kind == 'dense':
    return dense_input_layer
  raise ValueError(f"unknown model.input_layer {kind!r}: use 'sparse' or 'dense'")


def gather_logits(logits_BxI, x: SparseRows):
  """logits[row, col] for each nonzero (0 for padding)."""
  return logits_BxI.at[x.rows, x.cols].get(mode='fill', fill_value=0.0)


def l2_penalty(layers) -> jax.Array:
  """sum ||W||^2 over weight matrices (biases excluded), as the authors' regulariser."""
  return sum(jnp.sum(jnp.square(p['w'])) for p in jax.tree.leaves(
      layers, is_leaf=lambda t: isinstance(t, dict) and 'w' in t))
