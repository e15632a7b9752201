"""RaCT (Lobel, Li, Gao, Carin, ICLR 2020): a Mult-VAE actor fine-tuned to maximise a
learned critic's estimate of its NDCG@100, after the authors' code samlobel/RaCT_CF
(utils/base_models.py, utils/models.py MultiVAE, utils/training.py, scripts/main_vae.py).

  vaecf-train --config=configs/ract.py:ml-1m --config.data.path=PATH/ml-1m --workdir=DIR

What the authors' code does, and this file with it:
- The actor is Mult-VAE (600-200-600, tanh, multinomial, input dropout 0.5, KL annealed
  to 0.2 over 200,000 steps); params['actor'] has Mult-VAE's layout (vaecf.models.vae).
- Training split: every step, each user's items are split by the actor's own input
  dropout mask (keep 0.5): the kept items are the actor's input ("seen"), the dropped
  ones the critic's targets ("unseen"). Redrawn every step, as the dropout is.
- Critic input per user: [number seen, number unseen, the actor's NLL], the NLL being
  -sum log softmax(logits) over ALL the user's items (seen and unseen), at the sampled z.
  The three are batch-normalised without a learned scale or shift (tf.contrib batch_norm,
  trainable=False, decay 0.999, eps 1e-3) with moving statistics that are updated only
  while the actor is pretrained (train_batch_norm=True in that stage alone) and frozen
  after.
- Critic: 100 ReLU, 100 ReLU, 10 ReLU, 1 sigmoid (Glorot weights, zero biases), trained by
  MSE to the actor's NDCG@100 on the unseen items, seen items excluded from the ranking,
  with 1e-4 * sum theta^2 / batch_size (weights and biases).
- Three stages, by epoch: MLE (the negative ELBO, Adam 1e-3), critic alone (Adam 1e-4),
  then actor and critic together on the same batch: the actor minimises -critic (Adam
  2e-6, its own; the ELBO is dropped: ac_reg_loss_scaler=0 in main_vae.py) while the
  critic keeps fitting. scripts/main_vae.py: 100, 50 and 50 epochs on ML-20M.
- Test: z = mu, no dropout; the epoch is chosen on validation NDCG@100.

How it runs through vaecf's protocol with no trainer change: ONE phase, whose loss picks
the stage from an epoch counter in model_state (advanced by the phase's `after` hook)
with lax.switch, so each stage computes only what it needs. One phase, not one per stage,
because every phase's step advances the trainer's global step, from which the annealing
and the step's random key are drawn: with one phase the MLE stage is Mult-VAE to the bit
(tests/test_ract.py), and the joint stage updates actor and critic from one forward pass
as the authors' sess.run of both train ops does. The one optimizer (`optimizer`) holds
the authors' three Adams and the critic's moving statistics, and reads the stage from
the gradient: a part out of its stage gets an all-zero gradient and its state is left
exactly as it was (a zero gradient would still advance Adam's count and decay its
moments).

Departures from the authors' code:
- vaecf's data pipeline: batches keep the remainder (TF dropped it), random streams are
  JAX keys, dropout is drawn per nonzero (vaecf.models.nn.normalized_input).
- The NDCG target is vaecf's evaluator's NDCG@100 (`ndcg_at_k`); a user with no unseen
  item gets 0, as the authors' (their IDCG floor of 0.1 only matters then).
- The moving statistics are updated in the critic stage too (the actor is fixed then, so
  they only settle further) and are bias-corrected, so a run whose MLE stage is short or
  absent still normalises by its own features; the authors' start from (0, 1).
- The authors fine-tune the best pretrained actor (by validation); here the stages follow
  each other in one run, so fine-tuning starts from the last MLE epoch (choose mle_epochs
  near Mult-VAE's best epoch; on ML-1M it is 98).

It is over 300 lines because the actor, the critic with its feature statistics, the
critic's NDCG target and the optimizer that holds each stage's Adam belong together: the
stage switch couples them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vaecf import optim
from vaecf.models import likelihoods, nn, vae
from vaecf.models.registry import Model, Phase, hidden_dims, register
from vaecf.sparse import SparseRows

MLE, CRITIC, JOINT = 0, 1, 2
NDCG_K = 100
NORM_DECAY = 0.999  # tf.contrib.layers.batch_norm's defaults
NORM_EPS = 1e-3


def stage_of(epochs_done, mle_epochs: int, critic_epochs: int):
  """The stage of the epoch after `epochs_done` completed ones."""
  return ((epochs_done >= mle_epochs).astype(jnp.int32)
          + (epochs_done >= mle_epochs + critic_epochs).astype(jnp.int32))


# ---- the critic --------------------------------------------------------------------------

def init_critic(key, dims=(100, 100, 10)):
  """slim.fully_connected's init: Glorot-uniform weights, zero biases; and the moving
  statistics of the three features (first and second moments)."""
  sizes = [3, *dims, 1]
  keys = jax.random.split(key, len(sizes) - 1)
  glorot = jax.nn.initializers.glorot_uniform()
  layers = [{'w': glorot(k, (a, b), jnp.float32), 'b': jnp.zeros((b,), jnp.float32)}
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])]
  norm = {'mean': jnp.zeros((3,), jnp.float32), 'sq': jnp.ones((3,), jnp.float32)}
  return {'layers': layers, 'norm': norm}


def critic_forward(critic, feats_Bx3):
  """The critic's NDCG estimate in (0, 1) per user, from unnormalised features. The
  statistics are no trained parameters: no gradient reaches them from here."""
  mean, sq = jax.lax.stop_gradient((critic['norm']['mean'], critic['norm']['sq']))
  h = (feats_Bx3 - mean) * jax.lax.rsqrt(jnp.maximum(sq - mean * mean, 0.0) + NORM_EPS)
  layers = critic['layers']
  for p in layers[:-1]:
    h = jax.nn.relu(h @ p['w'] + p['b'])
  return jax.nn.sigmoid(h @ layers[-1]['w'] + layers[-1]['b'])[:, 0]


def critic_l2(critic):
  return sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(critic['layers']))


# ---- the split, the features and the target ---------------------------------------------

def seen_mask(x: SparseRows, k_drop, dropout_rate):
  """Per nonzero: kept by the actor's input dropout (the very mask `vae.encode` draws
  from the same key); padding is neither seen nor unseen."""
  pos = jnp.take(x.user_pos, x.rows, mode='fill', fill_value=0)
  keep = nn.keyed_uniform(k_drop, pos, x.cols) >= dropout_rate
  present = x.vals > 0
  return present & keep, present & ~keep


def ndcg_at_k(scores_BxI, x: SparseRows, seen_N, target_N, k: int = NDCG_K):
  """Per-user NDCG@k of `scores` on the target nonzeros, seen nonzeros excluded from the
  ranking: vaecf.evaluate.batch_metrics's formula, on a batch of flat nonzeros. A user
  without targets gets 0."""
  b, n_items = scores_BxI.shape
  scores = scores_BxI.astype(jnp.float32)
  scores = scores.at[x.rows, jnp.where(seen_N, x.cols, n_items)].set(-jnp.inf, mode='drop')
  relevant = jnp.zeros((b, n_items), jnp.float32).at[
      x.rows, jnp.where(target_N, x.cols, n_items)].set(1.0, mode='drop')
  kk = min(k, n_items)
  _, top_BxK = jax.lax.top_k(scores, kk)
  hits = jnp.take_along_axis(relevant, top_BxK, axis=1)
  n_tgt = jax.ops.segment_sum(target_N.astype(jnp.int32), x.rows, num_segments=b,
                              indices_are_sorted=True)
  discount = 1.0 / jnp.log2(jnp.arange(2, kk + 2, dtype=jnp.float32))
  dcg = (hits * discount).sum(1)
  ideal = (jnp.arange(kk)[None, :] < n_tgt[:, None]).astype(jnp.float32)
  idcg = (ideal * discount).sum(1)
  return dcg / jnp.maximum(idcg, 1e-12)


def _count(mask_N, x: SparseRows):
  return jax.ops.segment_sum(mask_N.astype(jnp.float32), x.rows, num_segments=x.n_users,
                             indices_are_sorted=True)


def _moments_carrier(norm, feats_Bx3):
  """Zero in value; its gradient w.r.t. the 'norm' leaves is minus the batch's feature
  moments (the step's loss is a batch mean), which is how the statistics reach the
  optimizer, the only thing a step may update (the EMA is in `optimizer`)."""
  f = jax.lax.stop_gradient(feats_Bx3)
  t = -(jnp.sum(norm['mean'] * f, 1) + jnp.sum(norm['sq'] * f * f, 1))
  return t - jax.lax.stop_gradient(t)


# ---- the loss ----------------------------------------------------------------------------

class RaCT:
  def __init__(self, n_items: int, dims, latent: int, critic_dims, *, mle_epochs: int,
               critic_epochs: int, critic_weight_decay: float, ac_kl_weight: float,
               dtype=None, input_layer: str = 'sparse'):
    self.n_items, self.dims, self.latent, self.critic_dims = n_items, dims, latent, critic_dims
    self.mle_epochs, self.critic_epochs = mle_epochs, critic_epochs
    self.critic_weight_decay, self.ac_kl_weight = critic_weight_decay, ac_kl_weight
    self.common = dict(dtype=dtype, input_layer=input_layer)

  def init(self, key):
    # The actor from `key` itself, so it is the Mult-VAE drawn from the same key.
    return {'actor': vae.init(key, self.n_items, self.dims, self.latent),
            'critic': init_critic(jax.random.fold_in(key, 7), self.critic_dims)}

  @staticmethod
  def init_model_state(key):
    del key
    return {'epoch': jnp.zeros((), jnp.int32)}

  @staticmethod
  def advance_epoch(params, model_state):
    del params
    return {**model_state, 'epoch': model_state['epoch'] + 1}

  def _actor_pass(self, actor, x, key, dropout_rate):
    """(logits at the sampled z, nll, kl, seen, unseen): the training forward pass."""
    k_drop, k_eps = jax.random.split(key)  # as vae.loss splits it
    mu, logvar = vae.encode(actor, x, k_drop, dropout_rate=dropout_rate, **self.common)
    z = vae.sample(k_eps, mu, logvar, x.user_pos)
    logits = vae.decode(actor, z, dtype=self.common['dtype'])
    nll = -likelihoods.multinomial(logits, x)
    seen, unseen = seen_mask(x, k_drop, dropout_rate)
    return logits, nll, vae.kl_divergence(mu, logvar), seen, unseen

  def loss(self, params, x: SparseRows, key, beta, *, model_state, dropout_rate):
    stage = stage_of(model_state['epoch'], self.mle_epochs, self.critic_epochs)
    zeros = jnp.zeros_like(x.user_mask)  # the batch's own: varying over shards like it
    l2 = lambda c: self.critic_weight_decay * critic_l2(c)

    def mle(params):
      loss_B, aux = vae.loss(params['actor'], x, key, beta, dropout_rate=dropout_rate,
                             likelihood='multinomial', **self.common)
      seen, unseen = seen_mask(x, jax.random.split(key)[0], dropout_rate)
      feats = jnp.stack([_count(seen, x), _count(unseen, x), aux['nll']], 1)
      loss_B = loss_B + _moments_carrier(params['critic']['norm'], feats)
      return loss_B, {**aux, 'ndcg': zeros, 'critic': zeros, 'critic_mse': zeros}

    def critic_fit(critic, logits, feats, seen, unseen):
      target = ndcg_at_k(jax.lax.stop_gradient(logits), x, seen, unseen)
      pred = critic_forward(critic, jax.lax.stop_gradient(feats))
      mse = jnp.square(pred - target)
      return mse + l2(critic), {'ndcg': target, 'critic': pred, 'critic_mse': mse}

    def critic_only(params):
      actor = jax.lax.stop_gradient(params['actor'])
      logits, nll, kl, seen, unseen = self._actor_pass(actor, x, key, dropout_rate)
      feats = jnp.stack([_count(seen, x), _count(unseen, x), nll], 1)
      loss_B, aux = critic_fit(params['critic'], logits, feats, seen, unseen)
      loss_B = loss_B + _moments_carrier(params['critic']['norm'], feats)
      return loss_B, {'nll': nll, 'kl': kl, **aux}

    def joint(params):
      logits, nll, kl, seen, unseen = self._actor_pass(params['actor'], x, key,
                                                       dropout_rate)
      feats = jnp.stack([_count(seen, x), _count(unseen, x), nll], 1)
      # The actor ascends the critic (held fixed); the critic fits the actor (held fixed).
      ac = -critic_forward(jax.lax.stop_gradient(params['critic']), feats)
      loss_B, aux = critic_fit(params['critic'], logits, feats, seen, unseen)
      return ac + self.ac_kl_weight * kl + loss_B, {'nll': nll, 'kl': kl, **aux}

    return jax.lax.switch(stage, (mle, critic_only, joint), params)

  def score(self, params, x: SparseRows):
    return vae.score(params['actor'], x, **self.common)

  def fallback(self, params):
    return vae.prior_mean_scores(params['actor'], latent_dim=self.latent,
                                 dtype=self.common['dtype'])


# ---- the optimizer -----------------------------------------------------------------------

def _any_nonzero(tree):
  return jnp.any(jnp.stack([jnp.any(g != 0) for g in jax.tree.leaves(tree)]))


def _adam_or_keep(on, lr, grads, state):
  """(updates, state) of Adam(lr) when `on`, else zero updates and `state` untouched."""
  tx = optim.adam(lr)
  return jax.lax.cond(on, lambda g, s: tx.update(g, s),
                      lambda g, s: (jax.tree.map(jnp.zeros_like, g), s), grads, state)


def optimizer(mle_lr: float, critic_lr: float, ac_lr: float,
              decay: float = NORM_DECAY) -> optax.GradientTransformation:
  """The authors' three Adams (actor MLE, actor AC, critic) and the critic's moving
  feature statistics, over {'actor', 'critic': {'layers', 'norm'}}.

  Which parts move is read from the gradient, which the loss zeroes out of stage:
  the critic's layers train when theirs is nonzero (critic and joint stages); the
  statistics track while theirs is (MLE and critic stages: it is minus the batch's
  moments, never zero for a batch with a click); the actor steps with the MLE Adam while
  the statistics track and with the AC Adam after, and not at all when its gradient is
  zero (critic stage). A part that does not move keeps its state bit for bit.
  """
  def init(params):
    return {'mle': optim.init(params['actor']), 'ac': optim.init(params['actor']),
            'critic': optim.init(params['critic']['layers']),
            'norm': {'count': jnp.zeros((), jnp.int32),
                     'ema': jax.tree.map(jnp.zeros_like, params['critic']['norm'])}}

  def update(grads, state, params=None):
    actor_on = _any_nonzero(grads['actor'])
    critic_on = _any_nonzero(grads['critic']['layers'])
    tracking = _any_nonzero(grads['critic']['norm'])
    u_mle, s_mle = _adam_or_keep(actor_on & tracking, mle_lr, grads['actor'], state['mle'])
    u_ac, s_ac = _adam_or_keep(actor_on & ~tracking, ac_lr, grads['actor'], state['ac'])
    u_actor = jax.tree.map(jnp.add, u_mle, u_ac)  # at most one is nonzero
    u_critic, s_critic = _adam_or_keep(critic_on, critic_lr, grads['critic']['layers'],
                                       state['critic'])

    def track(g, s):
      # Bias-corrected EMA of the batch moments (minus the gradient): the estimate is
      # the first batch's at once, then TF's moving average.
      count = s['count'] + 1
      ema = jax.tree.map(lambda e, gi: decay * e - (1 - decay) * gi, s['ema'], g)
      corr = 1 - jnp.asarray(decay, jnp.float32) ** count
      new = jax.tree.map(lambda e: e / corr, ema)
      return jax.tree.map(jnp.subtract, new, params['critic']['norm']), {'count': count,
                                                                         'ema': ema}
    u_norm, s_norm = jax.lax.cond(
        tracking, track, lambda g, s: (jax.tree.map(jnp.zeros_like, g), s),
        grads['critic']['norm'], state['norm'])
    updates = {'actor': u_actor, 'critic': {'layers': u_critic, 'norm': u_norm}}
    return updates, {'mle': s_mle, 'ac': s_ac, 'critic': s_critic, 'norm': s_norm}

  return optax.GradientTransformation(init, update)


# scripts/main_vae.py on ML-20M: 100 MLE epochs, 50 critic, 50 joint, batch 500; the
# learning rates are MultiVAE's defaults in utils/models.py. configs/ract.py scales the
# stages for ML-1M.
# The authors' ML-20M run: 100 MLE, 50 critic and 50 joint epochs. ML-1M has 10 steps an
# epoch where ML-20M has 233: its MLE stage keeps 100 epochs (Mult-VAE alone peaks at
# epoch 98 there); the critic and joint stages, which would need 23 times the epochs to
# take the authors' steps, get 100 epochs each (1,000 steps) and learning rates raised by
# the steps they lack (11,650 / 1,000 = 11.65), so each stage's Adam moves its parameters
# about as far as the authors' did.
@register('ract',
          model={'critic_dims': (100, 100, 10), 'mle_epochs': 100, 'critic_epochs': 50,
                 'critic_learning_rate': 1e-4, 'ac_learning_rate': 2e-6,
                 'critic_l2': 1e-4,  # on sum theta^2 / batch_size, as the authors'
                 'ac_kl_weight': 0.0},  # the KL in the actor's critic stage (authors: 0)
          train={'learning_rate': 1e-3, 'batch_size': 500, 'epochs': 200},
          datasets={'ml-1m': {'model': {'critic_epochs': 100, 'critic_learning_rate': 1.2e-3,
                                        'ac_learning_rate': 2.3e-5},
                              'train': {'epochs': 300}}})
def make(config, n_items: int) -> Model:
  m, t = config.model, config.train
  if m.likelihood != 'multinomial':
    raise ValueError(f'ract: model.likelihood={m.likelihood!r}; the critic reads the '
                     'multinomial NLL, as the authors\'')
  if not m.dropout_rate > 0:
    raise ValueError('ract: model.dropout_rate must be > 0: the dropped items are the '
                     'critic\'s targets')
  r = RaCT(n_items, hidden_dims(config, (600,)), m.latent_dim, tuple(m.critic_dims),
           mle_epochs=int(m.mle_epochs), critic_epochs=int(m.critic_epochs),
           critic_weight_decay=float(m.critic_l2) / t.batch_size,
           ac_kl_weight=float(m.ac_kl_weight),
           dtype=None if m.compute_dtype == 'float32' else jnp.dtype(m.compute_dtype),
           input_layer=m.input_layer)
  return Model(
      name='ract', init=r.init, loss=r.loss, score=r.score, uses_beta=True,
      fallback=r.fallback,
      optimizers={'ract': optimizer(t.learning_rate, float(m.critic_learning_rate),
                                    float(m.ac_learning_rate))},
      phases=(Phase('train', optimizer='ract', after=RaCT.advance_epoch),),
      init_model_state=r.init_model_state,
      hparams={'dropout_rate': float(m.dropout_rate)})
