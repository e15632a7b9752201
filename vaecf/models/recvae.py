"""RecVAE (Shenbin et al., WSDM 2020) through vaecf's model protocol, exact to the
authors' code ilya-shenbin/RecVAE, branch `master` (model.py, run.py).

  vaecf-train --config=configs/recvae.py:ml-1m --config.data.path=PATH/ml-1m --workdir=DIR \
      [--config.model.gamma=0.0035]

Its config keys and their defaults (the authors' settings) are the ones `register` names
below; on ML-1M gamma and the epoch are chosen on validation NDCG@100 (docs/results).

What master does, and this file with it:
- Input: each row L2-normalised, then inverted dropout (0.5 in the encoder phase, none in
  the decoder phase). vaecf drops nonzeros, which is the same thing.
- Encoder: five dense layers of 600, densely connected,
  h_k = LayerNorm(swish(W_k h_{k-1} + b_k + sum_{j<k} h_j)), LayerNorm eps 0.1 with a
  learned scale and shift; linear heads for mu and logvar (latent 200).
- Decoder: one linear layer latent -> items with a bias; multinomial likelihood.
- Composite prior, per latent dimension:
  3/20 N(0, 1) + 3/4 q_old(z | x) + 1/10 N(0, e^10), where q_old is a frozen copy of the
  encoder run (without dropout) on the same batch; KL is the one-sample estimate
  sum_k log q(z_k | x) - log p(z_k) at the sampled z, weighted per user by gamma * |x_u|.
  The loss is the batch mean of nll + gamma |x_u| KL.
- Every epoch: 3 shuffled passes updating only the encoder (its own Adam), then the
  prior's copy is refreshed from the encoder, then 1 pass updating only the decoder (its
  own Adam, no dropout, z still sampled). Adam lr 5e-4 each, batch 500.
- Before the first refresh the prior's encoder is a separately initialised one.
- Initialisation as PyTorch's nn.Linear: weights and biases U(-1/sqrt(fan_in), +1/sqrt(fan_in)).
- Test: z = mu, no dropout; the epoch is chosen by validation NDCG@100.

Where the `wsdm` branch (the paper's notebook, recvae.ipynb) differs:
- q_old is not an encoder copy: it is a per-training-user table of mu/logvar, set from
  the initial encoder before training and refreshed after every encoder phase, looked up
  by user index (so it exists only for training users).
- LayerNorm eps is PyTorch's default 1e-5 instead of 0.1.
- The decoder phase drops the KL term from the loss (no change to the decoder's gradient).
- gamma is hard-coded as beta=0.005 and training stops early when validation NDCG@100
  falls below half its best after epoch 10 (vaecf keeps the best epoch instead).
- Same otherwise: 3/20, 3/4, 1/10 mixture, 3 + 1 passes, Adam 5e-4, batch 500.

Departures from master, all from vaecf rather than from the model:
- Random streams differ (JAX keys; the shuffles are vaecf's, per (seed, epoch, pass)).
- An empty row normalises to zero instead of NaN (vaecf's epsilon); training users are
  never empty, and the Recommender's fallback for an empty history is the decoder at
  z = 0, the mean of the prior's fixed components.
- master's run.py evaluates a 1% sample of training users each epoch for its log; vaecf
  does not.

The encoder is a Flax Linen module. Linen, not NNX: Linen's init/apply are pure
functions of a params dict, which is what vaecf's state, optax, orbax and jax.export
already hold and pass around; NNX keeps state in objects and would need split/merge at
every boundary of the trainer. The first layer reads vaecf's sparse batches through
`vaecf.models.nn.sparse_dense` (a gather and a segment sum), so no [B, I] input is built.
"""
from __future__ import annotations

import functools
import math

import flax.linen as fnn
import jax
import jax.numpy as jnp
import optax

from vaecf.models import likelihoods, nn, vae
from vaecf.models.registry import Model, Phase, hidden_dims, register
from vaecf.sparse import SparseRows

MIXTURE_WEIGHTS = (3 / 20, 3 / 4, 1 / 10)  # N(0, I), q_old(z | x), N(0, e^10 I)
WIDE_LOGVAR = 10.0
LOG_2PI = math.log(2 * math.pi)

# PyTorch nn.Linear: kaiming_uniform(a=sqrt(5)) is U(+-1/sqrt(fan_in)), and so is the bias.
_torch_kernel = jax.nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def _torch_bias(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


class SparseDense(fnn.Module):
  """Dense(features) of a sparse batch: vaecf's gather + segment-sum first layer."""
  n_items: int
  features: int

  @fnn.compact
  def __call__(self, x: SparseRows, values):
    w = self.param('kernel', _torch_kernel, (self.n_items, self.features))
    b = self.param('bias', _torch_bias(self.n_items), (self.features,))
    return nn.sparse_dense({'w': w, 'b': b}, x, values)


class Encoder(fnn.Module):
  """(mu, logvar) of q(z | x) from the normalised (and dropped-out) nonzeros `values`."""
  n_items: int
  hidden: int = 600
  n_layers: int = 5
  latent: int = 200
  eps: float = 0.1  # master's LayerNorm eps (wsdm: 1e-5)

  @fnn.compact
  def __call__(self, x: SparseRows, values):
    hs = []
    for k in range(self.n_layers):
      if k == 0:
        pre = SparseDense(self.n_items, self.hidden, name='fc1')(x, values)
      else:
        pre = fnn.Dense(self.hidden, kernel_init=_torch_kernel,
                        bias_init=_torch_bias(self.hidden), name=f'fc{k + 1}')(hs[-1])
        for h in hs:  # dense connections: every earlier layer's output
          pre = pre + h
      # PyTorch's LayerNorm: the biased variance of the centred values.
      hs.append(fnn.LayerNorm(epsilon=self.eps, use_fast_variance=False,
                              name=f'ln{k + 1}')(jax.nn.swish(pre)))
    head = functools.partial(fnn.Dense, self.latent, kernel_init=_torch_kernel,
                             bias_init=_torch_bias(self.hidden))
    return head(name='fc_mu')(hs[-1]), head(name='fc_logvar')(hs[-1])


def _dummy_batch(n_items: int) -> tuple[SparseRows, jax.Array]:
  one = jnp.ones((1,), jnp.float32)
  zero = jnp.zeros((1,), jnp.int32)
  return SparseRows(zero, zero, one, one, zero), one


def log_norm_pdf(z, mu, logvar):
  """log N(z; mu, exp(logvar)) per coordinate (master's log_norm_pdf)."""
  return -0.5 * (logvar + LOG_2PI + jnp.square(z - mu) / jnp.exp(logvar))


def composite_log_prior(z_BxK, post_mu_BxK, post_logvar_BxK, weights=MIXTURE_WEIGHTS):
  """log p(z) per coordinate of 3/20 N(0, 1) + 3/4 N(post_mu, post_var) + 1/10 N(0, e^10)."""
  comps = jnp.stack([log_norm_pdf(z_BxK, 0.0, 0.0),
                     log_norm_pdf(z_BxK, post_mu_BxK, post_logvar_BxK),
                     log_norm_pdf(z_BxK, 0.0, WIDE_LOGVAR)], axis=-1)
  return jax.nn.logsumexp(comps + jnp.log(jnp.asarray(weights, jnp.float32)), axis=-1)


def kl_estimate(z_BxK, mu_BxK, logvar_BxK, post_mu_BxK, post_logvar_BxK):
  """One-sample KL(q || p) per user: sum_k log q(z_k | x) - log p(z_k)."""
  return jnp.sum(log_norm_pdf(z_BxK, mu_BxK, logvar_BxK)
                 - composite_log_prior(z_BxK, post_mu_BxK, post_logvar_BxK), axis=1)


class RecVAE:
  """The model's pure functions for one item count and architecture."""

  def __init__(self, n_items: int, hidden: int = 600, n_layers: int = 5, latent: int = 200,
               gamma: float = 0.005, ln_eps: float = 0.1):
    self.n_items, self.latent, self.gamma = n_items, latent, gamma
    self.encoder = Encoder(n_items, hidden, n_layers, latent, ln_eps)

  def init_encoder(self, key):
    return self.encoder.init(key, *_dummy_batch(self.n_items))['params']

  def init(self, key):
    k_enc, k_w, k_b = jax.random.split(key, 3)
    shape = (self.latent, self.n_items)
    return {'encoder': self.init_encoder(k_enc),
            'decoder': {'w': _torch_kernel(k_w, shape, jnp.float32),
                        'b': _torch_bias(self.latent)(k_b, (self.n_items,))}}

  def init_model_state(self, key):
    # master: the prior's encoder is initialised on its own, not copied, until the
    # first refresh.
    return {'prior': self.init_encoder(key)}

  def encode(self, enc_params, x: SparseRows, key=None, dropout_rate: float = 0.0):
    v = nn.normalized_input(x, key, dropout_rate)
    return self.encoder.apply({'params': enc_params}, x, v)

  def decode(self, dec_params, z_BxK):
    return nn.dense(dec_params, z_BxK)

  def loss(self, params, x: SparseRows, key, beta, *, model_state, dropout_rate: float,
           gamma=None):
    """Per-user nll + gamma |x_u| KL (beta is unused: the weight is per user); gamma is
    traced in the step (a sweep can vmap over it)."""
    del beta
    gamma = self.gamma if gamma is None else gamma
    k_drop, k_eps = jax.random.split(key)
    mu, logvar = self.encode(params['encoder'], x, k_drop, dropout_rate)
    z = vae.sample(k_eps, mu, logvar, x.user_pos)
    nll = -likelihoods.multinomial(self.decode(params['decoder'], z), x)
    post_mu, post_logvar = self.encode(model_state['prior'], x)  # frozen, no dropout
    kl = kl_estimate(z, mu, logvar, post_mu, post_logvar)
    n_u = jax.ops.segment_sum(x.vals, x.rows, num_segments=x.n_users, indices_are_sorted=True)
    return nll + gamma * n_u * kl, {'nll': nll, 'kl': kl}

  def score(self, params, x: SparseRows):
    mu, _ = self.encode(params['encoder'], x)
    return self.decode(params['decoder'], mu)

  def fallback(self, params):
    """An empty history: the decoder at z = 0, the mean of the prior's fixed parts."""
    return self.decode(params['decoder'], jnp.zeros((1, self.latent), jnp.float32))[0]

  @staticmethod
  def refresh_prior(params, model_state):
    return {**model_state, 'prior': params['encoder']}


# ilya-shenbin/RecVAE master, run.py: gamma 0.005 was set for ML-20M; the authors ran 50
# epochs there, whose epochs hold 28 times ML-1M's steps, so the default trains longer.
@register('recvae',
          model={'hidden_dims': (600,) * 5, 'latent_dim': 200, 'dropout_rate': 0.5,
                 'gamma': 0.005,  # KL weight per click: beta_u = gamma * |x_u|
                 'layer_norm_eps': 0.1,  # master (wsdm: 1e-5)
                 'encoder_passes': 3, 'decoder_passes': 1},
          train={'learning_rate': 5e-4, 'batch_size': 500, 'epochs': 300})
def make(config, n_items: int) -> Model:
  m, t = config.model, config.train
  dims = hidden_dims(config, (600,) * 5)
  if len(set(dims)) != 1:
    raise ValueError(f'recvae: model.hidden_dims={dims}; the dense connections add every '
                     'layer to every later one, so all widths must be equal')
  r = RecVAE(n_items, dims[0], len(dims), m.latent_dim, float(m.gamma),
             float(m.layer_norm_eps))
  encoder = Phase('encoder', optimizer='encoder', params='encoder',
                         passes=int(m.encoder_passes),
                         loss_options={'dropout_rate': m.dropout_rate},
                         after=RecVAE.refresh_prior)
  decoder = Phase('decoder', optimizer='decoder', params='decoder',
                         passes=int(m.decoder_passes),
                         loss_options={'dropout_rate': 0.0})
  return Model(
      name='recvae', init=r.init, loss=r.loss, score=r.score, fallback=r.fallback,
      optimizers={'encoder': optax.adam(t.learning_rate), 'decoder': optax.adam(t.learning_rate)},
      phases=(encoder, decoder), init_model_state=r.init_model_state,
      hparams={'gamma': r.gamma})
