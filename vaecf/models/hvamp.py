"""H+Vamp (Gated) (Kim & Suh, RecSys 2019) through vaecf's model protocol, exact to the
authors' code psywaves/EVCF at commit 4a7b66a72f98b0d9401a6f13a3fea6ceda15f155 (master,
2019-11-05): models/HVamp.py (the model for 2 or more layers), models/Model.py (pseudo-inputs,
reparameterisation), utils/nn.py (NonLinear, he_init), utils/distributions.py,
utils/optimizer.py (AdamNormGrad), utils/training.py (warm-up), experiment.py (defaults)
and the README's H+Vamp+Gate command.

  vaecf-train --config=configs/hvamp.py:ml-1m --config.data.path=PATH/ml-1m --workdir=DIR

This module is over 300 lines because it holds the network, its VampPrior, the authors'
optimizer and the registration, which only make sense together and which tests/test_hvamp.py
checks piece by piece.

What the authors' code does, and this file with it:
- Input: each row L2-normalised; the two encoder branches that read x each start with their
  own nn.Dropout(0.5) (independent masks). vaecf drops nonzeros, which is the same thing.
- A "layer" is NonLinear(gated=True): h = (W x + b) * sigmoid(W_g x + b_g), with no tanh
  (NonLinear ignores its activation when gated); gated=False gives tanh(W x + b), their
  H+Vamp without gates. H = hidden size, L = num_layers (>= 2).
- q(z2 | x): L layers (items -> H -> ... -> H); mean a Linear, logvar a Linear through
  Hardtanh(-12, 4).
- q(z1 | x, z2): a layer on x (items -> H) and one on z2 (z2 -> H), concatenated, then
  L - 1 layers (2H -> H, ...); mean and clipped logvar heads as above.
- p(z1 | z2): L layers from z2, mean and clipped logvar heads.
- p(x | z1, z2): a layer on z1 and one on z2, concatenated, L - 1 layers, then a Linear to
  the items (not gated): the logits of the multinomial likelihood.
- VampPrior p(z2) = 1/K sum_k q(z2 | u_k). The pseudo-inputs are
  u = Hardtanh(0, 1)(Linear(K -> items, no bias)(identity_K)), i.e. the clipped [K, I]
  weight, initialised N(0.05, 0.01) (pseudoinputs_mean/std), K = 1000. They go through
  q(z2 | .) as they are: not L2-normalised, but through q_z2's Dropout(0.5) in training
  (one [K, I] mask per step), without it in evaluation.
- Loss per user: -sum_i x_i log softmax(logits)_i + beta * KL, with the one-sample KL
  log q(z1|x,z2) + log q(z2|x) - log p(z1|z2) - log p(z2) at the sampled z1, z2 (z2 drawn
  first, z1 from q(z1 | x, z2)); the batch mean is minimised.
- Warm-up: beta = max_beta * epoch / warmup, capped at max_beta (100 epochs).
- Initialisation: he_init, N(0, sqrt(2 / fan_in)), on every Linear's weight (gates too);
  biases keep PyTorch's U(+-1/sqrt(fan_in)).
- AdamNormGrad: each parameter tensor's gradient divided by (its L2 norm + 1e-7), then
  PyTorch's Adam (lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + 1e-8)); lr 5e-4,
  batch 200, no weight decay.
- Test: evaluation mode, z2 = mean of q(z2 | x), z1 = mean of q(z1 | x, z2), no dropout;
  rank by p(x | z1, z2). The epoch is chosen by validation NDCG@100.

Departures, and where vaecf stands in for the authors' loop:
- Likelihood: multinomial (model.likelihood) as asked of this port. The README's command
  passes --input_type="binary" (experiment.py's default too), which is a Bernoulli with a
  sigmoid output; model.likelihood='logistic' is that Bernoulli on the same logits, without
  the authors' clamp of the probabilities to [1e-5, 1 - 1e-5].
- beta comes from vaecf's trainer, min(anneal_cap, step / total_anneal_steps), per step
  from 0; the authors hold it per epoch at max_beta * epoch / 100 (epoch 1 already gets
  max_beta / 100). The registered default of total_anneal_steps is set so both reach the cap
  after epoch 100; within epoch e vaecf's beta runs from max_beta (e-1)/100 to max_beta e/100.
- No early stopping (the authors stop after 50 epochs without a better validation NDCG
  once warm-up is over): vaecf trains train.epochs and keeps the best evaluated epoch.
- Random streams are JAX's: the user dropout masks and eps are keyed per user (vaecf's
  layout-independent draws), the pseudo-input mask per step (fair coins from the bits of
  random words, still Bernoulli(0.5) per entry); the shuffles are vaecf's.
- log p(z2) has a hand-written gradient (the same maths as autodiff, exact differences,
  no matmul expansion), because autodiff of it dominated the CPU step (see _vamp_bwd).
- The pseudo-inputs are stored as the [K, I] matrix itself (the transpose of the authors'
  weight): identity_K @ W^T is W^T exactly, so the identity matmul is skipped.
- An empty row normalises to zero as in PyTorch's normalize (vaecf's epsilon is on the
  squared norm); the Recommender's fallback for an empty history is the model's own scores
  of an empty row, as the authors' forward would give.
- Not ported: use_training_data_init (off by default), the other input types, the
  1-layer model (models/HVamp_1layer.py), validation loss; float32 only.

The network is a Flax Linen module, as recvae.py's encoder: pure init/apply over
a params dict. Both first layers that read x go through `vaecf.models.nn.sparse_dense` (a
gather and a segment sum, no [B, I] input); the pseudo-inputs, a dense [K, I] matrix, go
through the same q(z2 | .) layer as a plain matmul.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import flax.linen as fnn
import jax
import jax.numpy as jnp
import optax

from vaecf.models import likelihoods, nn
from vaecf.models.registry import Model, Phase, hidden_dims, register
from vaecf.sparse import SparseRows

LOG_2PI = math.log(2 * math.pi)
LOGVAR_RANGE = (-12.0, 4.0)  # Hardtanh on every logvar head
PSEUDO_RANGE = (0.0, 1.0)  # Hardtanh on the pseudo-inputs

# utils/nn.py he_init: weight ~ N(0, sqrt(2 / in_features)), untruncated.
he_init = jax.nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')  # 'normal' is untruncated


def torch_bias(fan_in: int):
  """PyTorch nn.Linear's default bias: U(+-1/sqrt(fan_in)) (he_init leaves biases alone)."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


class Linear(fnn.Module):
  """nn.Linear with he_init, on a dense [N, d_in] array or a sparse batch (x, values).

  A sparse batch needs d_in (the item count); `input_layer` picks vaecf's first layer.
  """
  features: int
  d_in: int | None = None
  input_layer: str = 'sparse'

  @fnn.compact
  def __call__(self, inp):
    sparse = isinstance(inp, tuple)
    d_in = self.d_in if sparse else inp.shape[-1]
    p = {'w': self.param('kernel', he_init, (d_in, self.features)),
         'b': self.param('bias', torch_bias(d_in), (self.features,))}
    if sparse:
      x, values = inp
      return nn.first_layer(self.input_layer)(p, x, values)
    return nn.dense(p, inp)


class NonLinear(fnn.Module):
  """utils/nn.py NonLinear: gated, (W x + b) * sigmoid(W_g x + b_g) and no activation;
  else activation(W x + b)."""
  features: int
  gated: bool = True
  activation: Callable | None = jnp.tanh
  d_in: int | None = None
  input_layer: str = 'sparse'

  @fnn.compact
  def __call__(self, inp):
    h = Linear(self.features, self.d_in, self.input_layer, name='linear')(inp)
    if self.gated:
      return h * jax.nn.sigmoid(Linear(self.features, self.d_in, self.input_layer,
                                       name='g')(inp))
    return h if self.activation is None else self.activation(h)


def _heads(h, mean: fnn.Module, logvar: fnn.Module):
  return mean(h), jnp.clip(logvar(h), *LOGVAR_RANGE)


class HVampNet(fnn.Module):
  """models/HVamp.py's networks; each method is one of its distributions."""
  n_items: int
  hidden: int = 600
  n_layers: int = 2
  z1: int = 200
  z2: int = 200
  n_pseudo: int = 1000
  gated: bool = True
  pseudo_mean: float = 0.05
  pseudo_std: float = 0.01
  input_layer: str = 'sparse'

  def setup(self):
    h, il = self.hidden, self.input_layer
    layer = lambda d_in=None: NonLinear(h, self.gated, jnp.tanh, d_in, il)
    self.q_z2_layers = [layer(self.n_items)] + [layer() for _ in range(self.n_layers - 1)]
    self.q_z2_mean, self.q_z2_logvar = Linear(self.z2), Linear(self.z2)
    self.q_z1_layers_x = layer(self.n_items)
    self.q_z1_layers_z2 = layer()
    self.q_z1_layers_joint = [layer() for _ in range(self.n_layers - 1)]
    self.q_z1_mean, self.q_z1_logvar = Linear(self.z1), Linear(self.z1)
    self.p_z1_layers = [layer() for _ in range(self.n_layers)]
    self.p_z1_mean, self.p_z1_logvar = Linear(self.z1), Linear(self.z1)
    self.p_x_layers_z1 = layer()
    self.p_x_layers_z2 = layer()
    self.p_x_layers_joint = [layer() for _ in range(self.n_layers - 1)]
    self.p_x_mean = Linear(self.n_items)  # logits: NonLinear(activation=None), not gated
    # models/Model.py: normal_init(means.linear, 0.05, 0.01), kept here as [K, I].
    self.means = self.param(
        'means', lambda key, shape: self.pseudo_mean + self.pseudo_std * jax.random.normal(
            key, shape, jnp.float32), (self.n_pseudo, self.n_items))

  def q_z2(self, inp):
    """(mean, logvar) of q(z2 | .) from (x, values) or a dense [N, I] input."""
    for l in self.q_z2_layers:
      inp = l(inp)
    return _heads(inp, self.q_z2_mean, self.q_z2_logvar)

  def q_z1(self, inp, z2):
    h = jnp.concatenate([self.q_z1_layers_x(inp), self.q_z1_layers_z2(z2)], axis=1)
    for l in self.q_z1_layers_joint:
      h = l(h)
    return _heads(h, self.q_z1_mean, self.q_z1_logvar)

  def p_z1(self, z2):
    h = z2
    for l in self.p_z1_layers:
      h = l(h)
    return _heads(h, self.p_z1_mean, self.p_z1_logvar)

  def p_x(self, z1, z2):
    h = jnp.concatenate([self.p_x_layers_z1(z1), self.p_x_layers_z2(z2)], axis=1)
    for l in self.p_x_layers_joint:
      h = l(h)
    return self.p_x_mean(h)

  def pseudo_inputs(self):
    return jnp.clip(self.means, *PSEUDO_RANGE)

  def __call__(self, inp):
    """Touches every parameter (for init)."""
    mu2, _ = self.q_z2(inp)
    mu1, _ = self.q_z1(inp, mu2)
    self.p_z1(mu2)
    self.q_z2(self.pseudo_inputs())
    return self.p_x(mu1, mu2)


def log_normal_diag(z, mean, logvar, axis=-1):
  """sum over `axis` of log N(z; mean, exp(logvar)) (with the 2 pi the authors drop: it
  cancels in their KL)."""
  return -0.5 * jnp.sum(LOG_2PI + logvar + jnp.square(z - mean) * jnp.exp(-logvar), axis=axis)


def vamp_log_prior(z_BxD, means_KxD, logvars_KxD):
  """log (1/K) sum_k N(z; mean_k, diag exp(logvar_k)) per user: [B]."""
  # A zero from z gives the components z's device variance inside shard_map, so the custom
  # rule's output types match (as vaecf.models.nn.add_bias); JAX then sums their gradient.
  zero = jnp.zeros_like(z_BxD[0, 0])
  return _vamp_log_prior(z_BxD, means_KxD + zero, logvars_KxD + zero)


@jax.custom_vjp
def _vamp_log_prior(z_BxD, means_KxD, logvars_KxD):
  return _vamp_fwd(z_BxD, means_KxD, logvars_KxD)[0]


def _vamp_fwd(z_BxD, means_KxD, logvars_KxD):
  a_BxK = log_normal_diag(z_BxD[:, None, :], means_KxD[None], logvars_KxD[None])
  out = jax.nn.logsumexp(a_BxK, axis=1) - math.log(means_KxD.shape[0])
  return out, (z_BxD, means_KxD, logvars_KxD, jax.nn.softmax(a_BxK, axis=1))


def _vamp_bwd(res, g_B):
  """The exact gradients, each one reduction of a [B, K, D] expression fused with the
  broadcast it reads. Autodiff of the forward (and these three written side by side,
  which XLA merges on their common z - m) materialises [B, K, D] arrays instead: 2.9 s of
  a 3.8 s ML-1M step on a CPU (B 200, K 1000, D 200); this is 0.3 s. The optimization
  barriers keep the three apart. (Matmul expansions would be faster still but lose
  digits to cancellation when exp(logvar) is small: (z - m)^2 as z^2 - 2zm + m^2.)"""
  z, m, lv, w_BxK = res
  w = g_B[:, None] * w_BxK  # d out / d a_bk, times the cotangent
  iv = jnp.exp(-lv)
  d_m = iv * jnp.sum(w[:, :, None] * (z[:, None] - m[None]), axis=0)
  z1, m1, w1 = jax.lax.optimization_barrier((z, m, w))
  sq = jnp.sum(w1[:, :, None] * jnp.square(z1[:, None] - m1[None]), axis=0)
  d_lv = 0.5 * (iv * sq - jnp.sum(w, axis=0)[:, None])
  z2, m2, w2, iv2 = jax.lax.optimization_barrier((z, m, w, iv))
  d_z = jax.lax.map(lambda zw: -jnp.sum(zw[1][:, None] * (zw[0][None] - m2) * iv2, axis=0),
                    (z2, w2), batch_size=20)
  return d_z, d_m, d_lv


_vamp_log_prior.defvjp(_vamp_fwd, _vamp_bwd)


def keyed_normal(key, user_pos_B, dim: int):
  """eps [B, dim] keyed on each user's position in the global batch (as vaecf.models.vae)."""
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, user_pos_B.astype(jnp.uint32))
  return jax.vmap(lambda k: jax.random.normal(k, (dim,)))(keys)


def dropout_dense(key, u, rate: float):
  """nn.Dropout on a dense array in training mode (inverted: kept entries / (1 - rate))."""
  if key is None or rate <= 0.0:
    return u
  if rate == 0.5 and u.ndim == 2:
    # Each bit of a uniform word is a fair coin: 32 entries per random word instead of one
    # (the [1000, I] mask drawn entry by entry was a tenth of an ML-1M step on a CPU).
    words = jax.random.bits(key, (u.shape[0], -(-u.shape[1] // 32)), jnp.uint32)
    bits = (words[:, :, None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
    keep = bits.reshape(u.shape[0], -1)[:, :u.shape[1]].astype(bool)
  else:
    keep = jax.random.bernoulli(key, 1.0 - rate, u.shape)
  return jnp.where(keep, u / (1.0 - rate), 0.0)


class HVamp:
  """The model's pure functions for one item count and architecture."""

  def __init__(self, n_items: int, *, likelihood: str = 'multinomial', **net):
    self.net = HVampNet(n_items, **net)
    if self.net.n_layers < 2:
      raise ValueError('hvamp follows models/HVamp.py, which needs num_layers >= 2 '
                       f'(got {self.net.n_layers}); HVamp_1layer.py is not ported')
    self.n_items, self.likelihood = n_items, likelihood

  def _apply(self, params, method, *args):
    return self.net.apply({'params': params}, *args, method=method)

  def init(self, key):
    one, zero = jnp.ones((1,), jnp.float32), jnp.zeros((1,), jnp.int32)
    x = SparseRows(zero, zero, one, one, zero)
    return self.net.init(key, (x, one))['params']

  def terms(self, params, x: SparseRows, v_z2, v_z1, pseudo_KxI, eps2_BxD, eps1_BxD, beta):
    """(nll + beta * KL, {'nll', 'kl'}) per user, given the input values each branch reads
    (after dropout), the pseudo-inputs q(z2 | .) sees, and eps for z2 and z1."""
    n = self.net
    mu2, lv2 = self._apply(params, n.q_z2, (x, v_z2))
    z2 = mu2 + eps2_BxD * jnp.exp(0.5 * lv2)
    mu1, lv1 = self._apply(params, n.q_z1, (x, v_z1), z2)
    z1 = mu1 + eps1_BxD * jnp.exp(0.5 * lv1)
    p_mu1, p_lv1 = self._apply(params, n.p_z1, z2)
    logits = self._apply(params, n.p_x, z1, z2)
    prior_mu, prior_lv = self._apply(params, n.q_z2, pseudo_KxI)
    kl = (log_normal_diag(z1, mu1, lv1) + log_normal_diag(z2, mu2, lv2)
          - log_normal_diag(z1, p_mu1, p_lv1) - vamp_log_prior(z2, prior_mu, prior_lv))
    nll = -likelihoods.get(self.likelihood)(logits, x)
    return nll + beta * kl, {'nll': nll, 'kl': kl}

  def loss(self, params, x: SparseRows, key, beta, *, dropout_rate: float = 0.5):
    k_z2in, k_z1in, k_pseudo, k_e2, k_e1 = jax.random.split(key, 5)
    pseudo = dropout_dense(k_pseudo, self._apply(params, self.net.pseudo_inputs),
                           dropout_rate)
    return self.terms(params, x, nn.normalized_input(x, k_z2in, dropout_rate),
                      nn.normalized_input(x, k_z1in, dropout_rate), pseudo,
                      keyed_normal(k_e2, x.user_pos, self.net.z2),
                      keyed_normal(k_e1, x.user_pos, self.net.z1), beta)

  def score(self, params, x: SparseRows):
    """Logits of p(x | z1, z2) at the posterior means (evaluation mode)."""
    v = nn.normalized_input(x)
    mu2, _ = self._apply(params, self.net.q_z2, (x, v))
    mu1, _ = self._apply(params, self.net.q_z1, (x, v), mu2)
    return self._apply(params, self.net.p_x, mu1, mu2)


class AdamNormGradState(NamedTuple):
  count: Any
  mu: Any
  nu: Any


def adam_norm_grad(learning_rate: float, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, norm_eps: float = 1e-7) -> optax.GradientTransformation:
  """utils/optimizer.py AdamNormGrad: per tensor g / (||g||_2 + 1e-7), then PyTorch's Adam
  (its bias correction folded into the step size, eps outside the corrected root)."""
  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return AdamNormGradState(jnp.zeros((), jnp.int32), zeros(), zeros())

  def update(grads, state, params=None):
    del params
    g = jax.tree.map(lambda t: t / (jnp.sqrt(jnp.sum(jnp.square(t))) + norm_eps), grads)
    count = state.count + 1
    mu = jax.tree.map(lambda m, t: b1 * m + (1 - b1) * t, state.mu, g)
    nu = jax.tree.map(lambda v, t: b2 * v + (1 - b2) * t * t, state.nu, g)
    t = count.astype(jnp.float32)
    step = learning_rate * jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    updates = jax.tree.map(lambda m, v: -step * m / (jnp.sqrt(v) + eps), mu, nu)
    return updates, AdamNormGradState(count, mu, nu)

  return optax.GradientTransformation(init, update)


# The authors' settings (psywaves/EVCF 4a7b66a, experiment.py defaults and the README's
# H+Vamp+Gate command; the paper has no ML-1M run): hidden 600 x 2, z1 = z2 = 200, gated,
# 1000 pseudo-inputs initialised N(0.05, 0.01), dropout 0.5, AdamNormGrad 5e-4, batch 200,
# beta warmed up over 100 epochs to max_beta 0.3 (the README's Netflix command). vaecf
# anneals per step, beta = min(cap, step / total_anneal_steps): 8333 = 100 epochs of
# ML-1M's 25 steps (4,834 training users, batch 200) / 0.3; set it for other data or
# batch sizes. 65 epochs is what an hour bought on 2 CPU cores (the run stops inside the
# warm-up, at beta 0.195); the authors' schedule is --config.train.epochs=400.
@register('hvamp',
          model={'hidden_dims': (600, 600), 'latent_dim': 200, 'z2_dim': 200,
                 'n_pseudo_inputs': 1000, 'pseudo_inputs_mean': 0.05,
                 'pseudo_inputs_std': 0.01, 'gated': True, 'dropout_rate': 0.5},
          train={'learning_rate': 5e-4, 'batch_size': 200, 'epochs': 65, 'eval_every': 1,
                 'anneal_cap': 0.3, 'total_anneal_steps': 8333})
def make(config, n_items: int) -> Model:
  m = config.model
  if m.compute_dtype != 'float32':
    raise ValueError(f'hvamp runs in float32 only (model.compute_dtype={m.compute_dtype!r})')
  dims = hidden_dims(config, (600, 600))
  if len(set(dims)) != 1:
    raise ValueError(f'hvamp: model.hidden_dims={dims}; the authors use one width for every '
                     'layer (hidden_size), repeated num_layers times')
  h = HVamp(n_items, likelihood=m.likelihood, hidden=dims[0], n_layers=len(dims),
            z1=m.latent_dim, z2=int(m.z2_dim),
            n_pseudo=int(m.n_pseudo_inputs),
            gated=bool(m.gated),
            pseudo_mean=float(m.pseudo_inputs_mean),
            pseudo_std=float(m.pseudo_inputs_std),
            input_layer=m.input_layer)
  return Model(
      name='hvamp', init=h.init, loss=h.loss, score=h.score, uses_beta=True,
      optimizers={'adam_norm_grad': adam_norm_grad(config.train.learning_rate)},
      phases=(Phase(optimizer='adam_norm_grad',
                           loss_options={'dropout_rate': m.dropout_rate}),))
