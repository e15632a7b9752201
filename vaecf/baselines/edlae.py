"""EDLAE (Steck 2020, "Autoencoders that don't overfit towards the Identity"), full rank.

A linear autoencoder x -> x B trained with dropout (probability p, inputs scaled by
1/(1-p)) and an L2 penalty lam. In expectation over the dropout the loss is

  ||X - X B||_F^2 + ||Lambda^1/2 B||_F^2,   Lambda = p/(1-p) dMat(diag(X^T X)) + lam I

(paper Eq. 9 for Lambda): dropout is a per-item ridge penalty, heavier on popular
items. With P = (X^T X + Lambda)^-1, the two full-rank solutions are

  variant 'edlae' (full emphasis: only dropped-out entries count in the loss), paper
    Eq. 8:  B = I - P dMat(1 / diag(P)), so diag(B) = 0;
  variant 'dlae' (plain denoising):  B = (X^T X + Lambda)^-1 X^T X = I - P Lambda.

Steck's reference notebook (github.com/hasteck/EDLAE_NeurIPS2020,
`learn_EDLAE_fullrank`, "implements Eqs. 8 and 9") computes exactly the 'edlae' line:
inv(X^T X + Lambda), divided column-wise by minus its diagonal, diagonal set to 0. The
full emphasis makes the item's own input unusable for its own output, which is why
the diagonal is zero: B's column j is the ridge regression of item j on the other
items with the per-item penalties Lambda (tests/test_edlae.py checks this column by
column). At p = 0, Lambda = lam I: 'edlae' is EASE (Steck 2019) with the same lam, and
'dlae' is plain ridge regression of X on X.

Two ways to P, as in `ease` (equal up to rounding; `form='auto'` picks by shape):
- primal: a Cholesky solve of X^T X + Lambda (I x I), float32 on the device;
- dual, for fewer training users U than items, by Woodbury with the diagonal Lambda:
    P = Lambda^-1 - Lambda^-1 X^T (I_U + X Lambda^-1 X^T)^-1 X Lambda^-1,
  a U x U Cholesky solve (its matrix has eigenvalues >= 1), in float64 since the
  subtraction cancels digits float32 would lose. With Lambda = lam I this is EASE's.

The low-rank EDLAE of the paper is left out: it has no closed form (the notebook
trains it by ADMM or alternating least squares, with rank, iteration count and an
ADMM penalty as extra knobs), and the full-rank model is the more accurate in the
paper's Table 1.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from vaecf.baselines import ease

# p: the paper's full-rank picks are 0.33 (ML-20M, Netflix) and 0.25 (MSD); validation
# here prefers 0.5 on ML-1M and Last.fm, and 0.67 brackets it from above (p -> 1 makes
# Lambda unbounded). p does not scale with the data (p/(1-p) multiplies the item
# counts); lam does, and with p > 0 the per-item term carries most of the penalty, so lam
# sits below EASE's (the paper: 300 against EASE's 500 on ML-20M; here EASE takes 800 on
# ML-1M and 100 on Last.fm, EDLAE 300 and 30-100).
GRID = tuple({'lam': lam, 'p': p} for p in (0.25, 0.5, 0.67)
             for lam in (30.0, 100.0, 300.0, 1000.0))

VARIANTS = ('edlae', 'dlae')


def check_hparams(hparams: dict) -> tuple[float, float, str]:
  """(lam, p, variant), or a ValueError naming the bad one."""
  missing = [k for k in ('lam', 'p') if k not in hparams]
  if missing:
    raise ValueError(f'EDLAE needs hyperparameters lam and p; missing {missing}')
  lam, p = float(hparams['lam']), float(hparams['p'])
  variant = hparams.get('variant', 'edlae')
  if not (math.isfinite(lam) and lam > 0):
    raise ValueError(f'EDLAE lam must be a finite number > 0, got {hparams["lam"]!r}')
  if not 0.0 <= p < 1.0:  # also False for NaN
    raise ValueError(f'EDLAE dropout probability p must be in [0, 1), got {hparams["p"]!r}')
  if variant not in VARIANTS:
    raise ValueError(f'EDLAE variant {variant!r}: use one of {VARIANTS}')
  return lam, p, variant


def penalty(train: sp.csr_matrix, lam: float, p: float) -> np.ndarray:
  """diag(Lambda) = p/(1-p) diag(X^T X) + lam, float64 [I]."""
  x = sp.csr_matrix(train, dtype=np.float64)
  counts_I = np.asarray(x.multiply(x).sum(axis=0)).ravel()
  return p / (1.0 - p) * counts_I + lam


def _weights(p_IxI, lam_I, variant: str):
  """B from P: Eq. 8 (zero diagonal) for 'edlae', I - P Lambda for 'dlae'."""
  eye = jnp.eye(p_IxI.shape[0], dtype=bool)
  if variant == 'edlae':
    return jnp.where(eye, 0.0, -p_IxI / jnp.diag(p_IxI)[None, :])
  return jnp.where(eye, 1.0, 0.0) - p_IxI * lam_I[None, :]


@functools.partial(jax.jit, static_argnames='variant')
def primal_weights(gram_IxI, lam_I, variant: str = 'edlae'):
  """B through the I x I Cholesky of X^T X + Lambda."""
  eye = jnp.eye(gram_IxI.shape[0], dtype=gram_IxI.dtype)
  factor = jax.scipy.linalg.cho_factor(gram_IxI + jnp.diag(lam_I))
  return _weights(jax.scipy.linalg.cho_solve(factor, eye), lam_I, variant)


def dual_precision(train: sp.csr_matrix, lam_I: np.ndarray) -> np.ndarray:
  """P = (X^T X + Lambda)^-1 by Woodbury through the U x U system, float64."""
  import scipy.linalg
  x = sp.csr_matrix(train, dtype=np.float64)
  inv_lam_I = 1.0 / np.asarray(lam_I, np.float64)
  xs = x @ sp.diags(inv_lam_I)  # X Lambda^-1, still sparse
  k_UxU = np.asarray((xs @ x.T).toarray())
  k_UxU[np.diag_indices_from(k_UxU)] += 1.0
  m_UxI = scipy.linalg.cho_solve(scipy.linalg.cho_factor(k_UxU, overwrite_a=True),
                                 xs.toarray(), overwrite_b=True)
  p_IxI = np.asarray(xs.T @ m_UxI)  # sparse times dense: nnz * I
  np.negative(p_IxI, out=p_IxI)
  p_IxI[np.diag_indices_from(p_IxI)] += inv_lam_I
  return p_IxI


def dual_weights(train: sp.csr_matrix, lam_I: np.ndarray, variant: str = 'edlae'):
  """B from the dual P, as `_weights` but in place: one I x I float64 array at a time
  (1.9 GB at I = 15k) besides the float32 result."""
  p_IxI = dual_precision(train, lam_I)
  if variant == 'edlae':
    p_IxI /= -np.diag(p_IxI).copy()[None, :]
    np.fill_diagonal(p_IxI, 0.0)
  else:
    p_IxI *= -np.asarray(lam_I, np.float64)[None, :]
    p_IxI[np.diag_indices_from(p_IxI)] += 1.0
  return p_IxI.astype(np.float32)


def fit(train: sp.csr_matrix, hparams: dict, validation=None) -> tuple[dict, dict]:
  del validation
  lam, p, variant = check_hparams(hparams)
  form = hparams.get('form', 'auto')
  if form == 'auto':
    form = ease.choose_form(*train.shape)
  lam_I = penalty(train, lam, p)
  if form == 'dual':
    b = dual_weights(train, lam_I, variant)
  elif form == 'primal':
    b = np.asarray(jax.device_get(primal_weights(
        jnp.asarray(ease.gram(train)), jnp.asarray(lam_I, jnp.float32), variant)))
  else:
    raise ValueError(f"EDLAE form {form!r}: use 'auto', 'primal' or 'dual'")
  return {'weights': b}, {'form': form, 'variant': variant}


# Scored like EASE: x B per batch, from the same persisted 'weights'.
make_score_fn = ease.make_score_fn
