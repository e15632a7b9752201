"""VASP (Vančura & Kordík, ICANN 2021: a deep VAE with a shallow parallel path) through
vaecf's model protocol, after the authors' code zombak79/vasp (VASP.ipynb, utils.py).

  vaecf-train --config=configs/vasp.py:ml-1m --config.data.path=PATH/ml-1m --workdir=DIR

What the authors' code does, and this file with it:
- Deep path, a VAE. Encoder: 7 dense layers of `hidden`, each
  e_k = LayerNorm(swish(W_k e_{k-1} + b_k + e_1 + ... + e_{k-1})) (e_0 the binary input
  row, no normalisation, no dropout), linear heads for mu and logvar. Decoder: 5 such
  layers from z, then two sigmoid outputs over the items, one from the last layer and
  one straight from z, multiplied. Keras defaults throughout: Glorot-uniform kernels,
  zero biases, LayerNorm eps 1e-3 with a learned scale and shift.
- Shallow path (EASE-like, learned): sigmoid(x W), W items x items without bias, its
  diagonal held at zero (so an item cannot predict itself).
- Output: the elementwise product of the deep path's two sigmoids and the shallow one,
  a probability per item.
- Loss: tfa's sigmoid focal crossentropy (alpha 0.25, gamma 2) on those probabilities,
  summed over items and averaged over rows, plus the Keras add_loss KL term
  -0.5 mean(1 + logvar - mu^2 - e^logvar), a mean over rows AND latent dimensions with
  weight 1 (so per row it is the usual KL / latent_dim). The crossentropy is Keras's
  from probabilities: p clipped to [1e-7, 1 - 1e-7] and 1e-7 added inside the logs
  (the clip passes no gradient outside it, as in TF; tfa's (1 - p_t)^gamma reads the
  unclipped p, so a positive near p = 0 is still pushed up).
- Augmentation (utils.SplitGenerator, p50_splits with prevent_identity): every epoch
  each training user's items are shuffled and cut at s = int(0.5 n); the model learns
  second half -> first half and first half -> second half (target and input disjoint:
  the target never holds the input's items; a full-row identity pair is not used). Here
  the cut is drawn inside the loss from its per-step key, keyed per (user, item), and a
  user is in one step per epoch, so the split is redrawn every epoch, both directions
  from the same draw, as theirs.
- Optimiser: Keras's Nadam (its momentum schedule 0.96^(0.004 t), eps 1e-7), lr 5e-5
  for 50 epochs, then 1e-5 for 20, then 20 more: the notebook prints "lr 0.000001" for
  the third stage but passes 0.00001. Each stage re-compiles the Keras model with a new
  Nadam, which restarts its moments and schedule; so does this one (stage_restart).
- Evaluation: Keras predict runs the decoder at z = mu, deterministic, as `score` here.
  The paper's "5-fold" test is five disjoint 20% holdouts of each test user's items,
  each scored once at z = mu, not five draws of z; vaecf scores its own protocol's one
  holdout (docs/protocol.md). `score` returns the log of the product (a sum of three
  log-sigmoids): the same ranking, without float32 ties where the product saturates.
  An empty history is scored as an empty row (the model is defined there).

Where this differs from their run, and why:
- Widths: they used hidden 4096 and latent 2048 on ML-20M (a GPU); the defaults here
  are 1024 and 512 (`hidden_dims`, `latent_dim`), and on ML-1M the model registers 512
  and 256 at batch 256, what a 2-core CPU affords (about 10 s an epoch).
- They modelled only the 33% most popular items (items_sampling=0.33: the other items'
  outputs are 0), to fit the 20k x 20k shallow path in GPU memory; vaecf models every
  item (ML-1M's 3.5k x 3.5k fits) and the factory gets no popularity order to cut by.
- Steps: their generator cuts the shuffled users into slices of 1024 and fills a step
  of 2048 rows with one slice in one direction and the next slice in the other, over
  floor(n / 1024) - 1 slices an epoch (the last full slice and the remainder sit the
  epoch out); here a step holds batch_size users in both directions (2 x batch_size
  rows, the same count at batch 1024) and an epoch sees every user. The loss per user
  is the mean of its two rows' terms, so the batch mean is their row mean.
- Learning-rate stages are counted in optimiser steps (the factory does not know the
  training-set size): model.stage_steps, default (250, 100, 100) = the authors' 50/20/20
  epochs at ceil(4834 / 1024) = 5 steps an epoch (ML-1M's training users at their batch;
  the ML-1M preset's batch 256 makes it (950, 380, 380)). Set them for other data or
  batch sizes. Stage k runs at train.learning_rate * model.stage_lr_factors[k]; after the
  last stage the rate stays at the last factor.
- The zero diagonal: Keras's kernel constraint zeroes it after every update (the first
  step's forward still sees the random initial diagonal); here it is zero from the start
  and masked in the forward, so it never moves.
- Random streams differ (JAX keys, vaecf's shuffles).

The first encoder layer reads vaecf's sparse batches (`vaecf.models.nn.sparse_dense`, a
gather and segment sum). The shallow path x W needs the batch's [B, I] rows: they are
built inside the step, one batch at a time, as are the focal loss's [B, I] targets.

It is over 300 lines because the model, its focal loss, its split augmentation and the
Keras Nadam it trains with are each the authors' own and are kept beside the account of
where they differ.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vaecf.models import nn, vae
from vaecf.models.registry import Model, Phase, hidden_dims, register
from vaecf.sparse import SparseRows

KERAS_EPSILON = 1e-7  # tf.keras.backend.epsilon(): the crossentropy's clip, Nadam's eps
LN_EPS = 1e-3  # tf.keras.layers.LayerNormalization's default
_glorot = jax.nn.initializers.glorot_uniform()


# ------------------------------------------------------------------ networks

class SparseDense(fnn.Module):
  """Dense(features) of a sparse batch (Keras init: Glorot kernel, zero bias)."""
  n_items: int
  features: int

  @fnn.compact
  def __call__(self, x: SparseRows, values):
    w = self.param('kernel', _glorot, (self.n_items, self.features))
    b = self.param('bias', jax.nn.initializers.zeros, (self.features,))
    return nn.sparse_dense({'w': w, 'b': b}, x, values)


class DenseResidualStack(fnn.Module):
  """e_k = LayerNorm(swish(pre_k + e_1 + ... + e_{k-1})), pre_1 given, pre_k = Dense(e_{k-1})."""
  width: int
  n_layers: int

  @fnn.compact
  def __call__(self, pre1):
    hs = []
    for k in range(self.n_layers):
      pre = pre1 if k == 0 else fnn.Dense(self.width, kernel_init=_glorot,
                                          name=f'dense{k + 1}')(hs[-1])
      for h in hs:
        pre = pre + h
      # Keras LayerNormalization: the biased variance of the centred values.
      hs.append(fnn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False,
                              name=f'ln{k + 1}')(jax.nn.swish(pre)))
    return hs[-1]


class Encoder(fnn.Module):
  """(mu, logvar) of q(z | x) from the input nonzeros' `values` (0/1)."""
  n_items: int
  hidden: int
  n_layers: int
  latent: int

  @fnn.compact
  def __call__(self, x: SparseRows, values):
    pre1 = SparseDense(self.n_items, self.hidden, name='dense1')(x, values)
    h = DenseResidualStack(self.hidden, self.n_layers, name='stack')(pre1)
    head = functools.partial(fnn.Dense, self.latent, kernel_init=_glorot)
    return head(name='mean')(h), head(name='log_var')(h)


class Decoder(fnn.Module):
  """Logits of the deep path's two sigmoids: from the residual stack and straight from z."""
  n_items: int
  hidden: int
  n_layers: int

  @fnn.compact
  def __call__(self, z):
    pre1 = fnn.Dense(self.hidden, kernel_init=_glorot, name='dense1')(z)
    h = DenseResidualStack(self.hidden, self.n_layers, name='stack')(pre1)
    out = functools.partial(fnn.Dense, self.n_items, kernel_init=_glorot)
    return out(name='resnet')(h), out(name='latent')(z)


def off_diagonal(w_IxI):
  """W with its diagonal zeroed (DiagonalToZero): no gradient reaches the diagonal."""
  n = w_IxI.shape[0]
  return jnp.where(jnp.eye(n, dtype=bool), 0.0, w_IxI)


def dense_rows(x: SparseRows, values, n_items: int):
  """The batch's [B, I] rows holding `values` at the nonzeros (padding dropped)."""
  return jnp.zeros((x.n_users, n_items), jnp.float32).at[x.rows, x.cols].add(
      values, mode='drop')


# ------------------------------------------------------------------ loss pieces

def focal_crossentropy(p_BxI, y_BxI, alpha, gamma, eps: float = KERAS_EPSILON):
  """tfa.losses.sigmoid_focal_crossentropy(y, p) from probabilities, summed over items.

  alpha_t (1 - p_t)^gamma * bce, bce from Keras's clipped probabilities; p_t and the
  modulating factor use the unclipped p, as tfa.
  """
  pc = jnp.clip(p_BxI, eps, 1.0 - eps)
  bce = -(y_BxI * jnp.log(pc + eps) + (1.0 - y_BxI) * jnp.log(1.0 - pc + eps))
  p_t = y_BxI * p_BxI + (1.0 - y_BxI) * (1.0 - p_BxI)
  alpha_t = y_BxI * alpha + (1.0 - y_BxI) * (1.0 - alpha)
  return jnp.sum(alpha_t * (1.0 - p_t) ** gamma * bce, axis=-1)


def kl_per_dim(mu_BxK, logvar_BxK):
  """The authors' KL per row: -0.5 mean_k(1 + logvar - mu^2 - e^logvar) (KL / K)."""
  return -0.5 * jnp.mean(1.0 + logvar_BxK - jnp.square(mu_BxK) - jnp.exp(logvar_BxK), axis=1)


def split_halves(x: SparseRows, key, fraction: float = 0.5):
  """(first, second): 0/1 per nonzero, each user's clicks shuffled and cut at
  int(fraction * n_u) (utils.split2_50 / split1_50); padding is in neither.

  The shuffle is a uniform draw per (user position, item), so a user's cut is the same
  whatever the batch layout or sharding. Its rank among the user's clicks comes from a
  sort by (row, draw).
  """
  n, nnz = x.n_users, x.rows.shape[0]
  active = x.vals > 0
  pos = jnp.take(x.user_pos, x.rows, mode='fill', fill_value=0)
  u = jnp.where(active, nn.keyed_uniform(key, pos, x.cols), 2.0)  # non-clicks last
  order = jnp.lexsort((u, x.rows))
  counts = jax.ops.segment_sum(jnp.ones((nnz,), jnp.int32), x.rows, num_segments=n + 1)
  starts = jnp.cumsum(counts) - counts
  rank = jnp.zeros((nnz,), jnp.int32).at[order].set(
      jnp.arange(nnz, dtype=jnp.int32) - starts[x.rows[order]])
  n_clicks = jax.ops.segment_sum(active.astype(jnp.float32), x.rows, num_segments=n)
  cut = jnp.floor(n_clicks * fraction).astype(jnp.int32)
  first = active & (rank < jnp.take(cut, x.rows, mode='fill', fill_value=0))
  return first.astype(jnp.float32), (active & ~first).astype(jnp.float32)


# ------------------------------------------------------------------ the model

class VASP:
  """The model's pure functions for one item count and architecture."""

  def __init__(self, n_items: int, hidden: int = 1024, encoder_layers: int = 7,
               decoder_layers: int = 5, latent: int = 512, split_fraction: float = 0.5):
    self.n_items, self.latent, self.split_fraction = n_items, latent, split_fraction
    self.encoder = Encoder(n_items, hidden, encoder_layers, latent)
    self.decoder = Decoder(n_items, hidden, decoder_layers)

  def init(self, key):
    k_enc, k_dec, k_ease = jax.random.split(key, 3)
    one = jnp.ones((1,), jnp.float32)
    zero = jnp.zeros((1,), jnp.int32)
    dummy = SparseRows(zero, zero, one, one, zero)
    return {'encoder': self.encoder.init(k_enc, dummy, one)['params'],
            'decoder': self.decoder.init(k_dec, jnp.zeros((1, self.latent)))['params'],
            'ease': {'kernel': off_diagonal(_glorot(k_ease, (self.n_items,) * 2))}}

  def forward(self, params, x: SparseRows, values, ease_w, key=None):
    """(deep resnet logits, deep latent logits, shallow logits, mu, logvar) for the
    input `values` per nonzero; z is sampled with `key`, else z = mu (Keras predict)."""
    mu, logvar = self.encoder.apply({'params': params['encoder']}, x, values)
    z = mu if key is None else vae.sample(key, mu, logvar, x.user_pos)
    a_r, a_l = self.decoder.apply({'params': params['decoder']}, z)
    a_e = dense_rows(x, values, self.n_items) @ ease_w
    return a_r, a_l, a_e, mu, logvar

  def loss(self, params, x: SparseRows, key, beta, *, focal_alpha, focal_gamma, kl_weight):
    """Per user: the mean over its two directions (second half -> first, first -> second)
    of focal + kl_weight * KL / K (beta is unused: the authors' KL weight is fixed)."""
    del beta
    k_split, k_z = jax.random.split(key)
    first, second = split_halves(x, k_split, self.split_fraction)
    w = off_diagonal(params['ease']['kernel'])
    focal, kl = 0.0, 0.0
    for d, (inp, target) in enumerate(((second, first), (first, second))):
      a_r, a_l, a_e, mu, logvar = self.forward(params, x, inp, w, jax.random.fold_in(k_z, d))
      p = jax.nn.sigmoid(a_r) * jax.nn.sigmoid(a_l) * jax.nn.sigmoid(a_e)
      focal += 0.5 * focal_crossentropy(p, dense_rows(x, target, self.n_items), focal_alpha,
                                        focal_gamma)
      kl += 0.5 * kl_per_dim(mu, logvar)
    return focal + kl_weight * kl, {'focal': focal, 'kl': kl}

  def score(self, params, x: SparseRows):
    """log of the predicted probability at z = mu: the ranking of Keras predict."""
    clicks = (x.vals > 0).astype(jnp.float32)
    a_r, a_l, a_e, _, _ = self.forward(params, x, clicks, off_diagonal(params['ease']['kernel']))
    return jax.nn.log_sigmoid(a_r) + jax.nn.log_sigmoid(a_l) + jax.nn.log_sigmoid(a_e)


# ------------------------------------------------------------------ optimiser

class NadamState(NamedTuple):
  count: Any  # steps taken over all stages
  m_cache: Any  # Keras's momentum_cache: the product of the schedule's mu_t so far
  mu: Any
  nu: Any


def stage_of(count, stage_steps: Sequence[int]):
  """(stage index, its first step) of step `count`; past the end, the last stage."""
  starts = np.concatenate([[0], np.cumsum(stage_steps)[:-1]]).astype(np.int32)
  s = jnp.sum(count >= jnp.asarray(starts[1:])).astype(jnp.int32)
  return s, jnp.asarray(starts)[s]


def keras_nadam(learning_rate: float, stage_steps: Sequence[int] = (),
                stage_lr_factors: Sequence[float] = (1.0,), restart: bool = True,
                b1: float = 0.9, b2: float = 0.999, eps: float = KERAS_EPSILON,
                schedule_decay: float = 0.004) -> optax.GradientTransformation:
  """tf.keras.optimizers.Nadam (optimizer_v2) run in stages of `stage_steps` steps at
  learning_rate * stage_lr_factors[k]; with `restart`, each stage starts as a fresh
  Nadam (zero moments, schedule from step 1), as a Keras re-compile does."""
  factors = jnp.asarray(stage_lr_factors, jnp.float32)
  if len(stage_lr_factors) != max(len(stage_steps), 1):
    raise ValueError(f'{len(stage_lr_factors)} learning-rate factors for '
                     f'{len(stage_steps)} stages')

  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return NadamState(jnp.zeros((), jnp.int32), jnp.ones((), jnp.float32), zeros(), zeros())

  def update(grads, state, params=None):
    del params
    s, start = stage_of(state.count, stage_steps) if stage_steps else (0, 0)
    local = state.count - start if restart else state.count
    fresh = local == 0
    mu = jax.tree.map(lambda m: jnp.where(fresh, 0.0, m), state.mu)
    nu = jax.tree.map(lambda v: jnp.where(fresh, 0.0, v), state.nu)
    m_cache = jnp.where(fresh, 1.0, state.m_cache)
    t = (local + 1).astype(jnp.float32)
    m_t = b1 * (1.0 - 0.5 * 0.96 ** (schedule_decay * t))
    m_t1 = b1 * (1.0 - 0.5 * 0.96 ** (schedule_decay * (t + 1.0)))
    sched_new = m_cache * m_t
    sched_next = sched_new * m_t1
    v_corr = 1.0 - b2 ** t
    lr = learning_rate * factors[s]
    mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * g * g, nu, grads)

    def step(g, m, v):
      m_bar = (1.0 - m_t) * g / (1.0 - sched_new) + m_t1 * m / (1.0 - sched_next)
      return -lr * m_bar / (jnp.sqrt(v / v_corr) + eps)
    updates = jax.tree.map(step, grads, mu, nu)
    return updates, NadamState(state.count + 1, sched_new, mu, nu)

  return optax.GradientTransformation(init, update)


# Authors' settings, VASP.ipynb: focal alpha 0.25 / gamma 2, KL weight 1, Nadam 5e-5 x 50
# epochs, then 1e-5 x 20 and 1e-5 x 20 (90 epochs), 1024 users a step. Widths are the
# CPU defaults (theirs: hidden 4096, latent 2048); stages in steps for ML-1M (docstring).
@register('vasp',
          model={'hidden_dims': (1024,) * 7, 'latent_dim': 512, 'decoder_layers': 5,
                 'focal_alpha': 0.25, 'focal_gamma': 2.0, 'kl_weight': 1.0,
                 'split_fraction': 0.5,
                 'stage_steps': (250, 100, 100), 'stage_lr_factors': (1.0, 0.2, 0.2),
                 'stage_restart': True},
          train={'learning_rate': 5e-5, 'batch_size': 1024, 'epochs': 90},
          # What a 2-core CPU affords on ML-1M: 512-wide layers, latent 256, batch 256
          # (19 steps an epoch), the authors' 50/20/20-epoch stages in those steps.
          datasets={'ml-1m': {'model': {'hidden_dims': (512,) * 7, 'latent_dim': 256,
                                        'stage_steps': (950, 380, 380)},
                              'train': {'batch_size': 256}}})
def make(config, n_items: int) -> Model:
  m = config.model
  dims = hidden_dims(config, (1024,) * 7)
  if len(set(dims)) != 1:
    raise ValueError(f'vasp: model.hidden_dims={dims}; every layer adds all earlier ones, '
                     'so the widths must be equal (one width, one entry per encoder layer)')
  if m.compute_dtype != 'float32':
    raise ValueError(f'vasp runs in float32 only (model.compute_dtype={m.compute_dtype!r})')
  v = VASP(n_items, dims[0], len(dims), int(m.decoder_layers), int(m.latent_dim),
           float(m.split_fraction))
  hparams = {'focal_alpha': float(m.focal_alpha), 'focal_gamma': float(m.focal_gamma),
             'kl_weight': float(m.kl_weight)}
  nadam = keras_nadam(float(config.train.learning_rate), tuple(int(s) for s in m.stage_steps),
                      tuple(float(f) for f in m.stage_lr_factors), bool(m.stage_restart))
  return Model(name='vasp', init=v.init, loss=v.loss, score=v.score,
               optimizers={'nadam': nadam}, phases=(Phase(optimizer='nadam'),),
               hparams=hparams)
