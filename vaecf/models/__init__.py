"""The models: a name in the config picks a factory that returns a `Model`.

A `Model` is a bundle of pure functions; the trainer, the evaluator and the
recommender only ever call these (vaecf/models/registry.py). Built in: Mult-VAE and
Mult-DAE (here), RecVAE (recvae.py), H+Vamp (hvamp.py), RaCT (ract.py) and VASP
(vasp.py). A user's model registers itself from its own module, named by
`config.model.module`, without editing vaecf/ (experiments/README.md).

The simplest model (Mult-VAE, Mult-DAE) trains in one phase: one shuffled pass per
epoch, the config's Adam over all parameters. A model may instead declare its own
`optimizers` and a tuple of `Phase`s (which top-level parameters each updates, with
which loss options, how many passes, and a hook run after it), and keep state that is
not trained (`init_model_state`), which the checkpoints hold (RecVAE).

`hparams` names the model's traced hyperparameters with this config's values (e.g.
dropout_rate, weight_decay, RecVAE's gamma): the step passes them to `loss` and `penalty`
as keyword arguments holding traced scalars, so a sweep trains M values in one vmapped
step (vaecf.sweep) and changing one never recompiles.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from vaecf.common import Params
from vaecf.models import dae, nn, vae
from vaecf.models.registry import (DEFAULT_OPTIMIZER, MOVED_MODULES, Model, Phase, Settings,
                                   UntrustedCode, available, build, hidden_dims,
                                   import_module, import_saved, register, settings)

__all__ = ['Model', 'Phase', 'Settings', 'DEFAULT_OPTIMIZER', 'MOVED_MODULES', 'Params',
           'UntrustedCode', 'register', 'available', 'build', 'settings', 'hidden_dims',
           'import_module', 'import_saved']


def _dtype(config):
  return None if config.model.compute_dtype == 'float32' else jnp.dtype(config.model.compute_dtype)


def _common(config) -> dict:
  """Keyword arguments the built-in models' loss and score share."""
  return dict(dtype=_dtype(config), input_layer=config.model.input_layer)


def l2_if_nonzero(params, weight_decay):
  """weight_decay * sum ||W||^2, skipped at run time when it is 0 (XLA cannot drop 0 * x,
  and the sum and its gradient are a pass over every weight)."""
  return jax.lax.cond(weight_decay != 0, lambda p: weight_decay * nn.l2_penalty(p),
                      lambda p: jnp.zeros((), jnp.float32), params)


def _traced_regularisers(loss_fn, hparams: dict):
  """(loss, penalty) taking dropout_rate and weight_decay (traced in the step; called
  directly, the config's values)."""
  def loss(params, x, key, beta, *, dropout_rate=hparams['dropout_rate'],
           weight_decay=hparams['weight_decay']):
    del weight_decay
    return loss_fn(params, x, key, beta, dropout_rate=dropout_rate)

  def penalty(params, *, dropout_rate=hparams['dropout_rate'],
              weight_decay=hparams['weight_decay']):
    del dropout_rate
    return l2_if_nonzero(params, weight_decay)
  return loss, penalty


@register('multvae')
def _multvae(config, n_items: int) -> Model:
  m = config.model
  dims = hidden_dims(config, (600,))
  lam = 0.0 if m.weight_decay is None else m.weight_decay
  hparams = {'dropout_rate': m.dropout_rate, 'weight_decay': lam}
  loss, penalty = _traced_regularisers(functools.partial(
      vae.loss, likelihood=m.likelihood, **_common(config)), hparams)
  return Model(
      name='multvae',
      init=lambda key: vae.init(key, n_items, dims, m.latent_dim),
      loss=loss,
      score=functools.partial(vae.score, **_common(config)),
      penalty=penalty,
      uses_beta=True,
      # With no evidence the posterior is the prior: rank by the decoder at its mean.
      fallback=functools.partial(vae.prior_mean_scores, latent_dim=m.latent_dim,
                                 dtype=_dtype(config)),
      hparams=hparams)


@register('multdae')
def _multdae(config, n_items: int) -> Model:
  m = config.model
  dims = hidden_dims(config, ())
  # The authors' lam = 0.01 / batch_size on sum ||W||^2 (weights only).
  lam = 0.01 / config.train.batch_size if m.weight_decay is None else m.weight_decay
  hparams = {'dropout_rate': m.dropout_rate, 'weight_decay': lam}
  loss, penalty = _traced_regularisers(functools.partial(
      dae.loss, likelihood=m.likelihood, **_common(config)), hparams)
  return Model(
      name='multdae',
      init=lambda key: dae.init(key, n_items, dims, m.latent_dim),
      loss=loss,
      score=functools.partial(dae.score, **_common(config)),
      penalty=penalty,
      hparams=hparams)


# Registered after the two above: their modules use this package's helpers.
from vaecf.models import hvamp, ract, recvae, vasp  # noqa: E402,F401
