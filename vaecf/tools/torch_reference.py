"""The Mult-VAE step as a plain PyTorch script would write it, timed beside vaecf's.

`python -m vaecf.tools.benchmark --compare_torch` runs it in the same process, on the
same users, after vaecf's step, so the two speeds are a ratio taken side by side. It is
the script a researcher would write from the paper with PyTorch's own pieces: a sparse
CSR first layer (torch.sparse.mm), tanh, the multinomial log-likelihood gathered at the
clicks, the KL at a fixed beta, torch.optim.Adam with its defaults. PyTorch is not a
dependency of vaecf: without it, this raises an error that says how to get it.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp


def _torch():
  try:
    import torch
  except ImportError as e:
    raise SystemExit('--compare_torch needs PyTorch, which vaecf does not depend on: '
                     "pip install torch --index-url https://download.pytorch.org/whl/cpu") from e
  return torch


def time_train(x: sp.csr_matrix, batch_size: int, n_steps: int, hidden: int = 600,
               latent: int = 200, dropout: float = 0.5, beta: float = 0.2,
               threads: int | None = None, warmup: int = 3) -> dict:
  """Users/s of `n_steps` Mult-VAE steps (after `warmup`) over consecutive batches of x."""
  torch = _torch()
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)
  n_items = x.shape[1]
  nn = torch.nn
  enc1 = nn.Linear(n_items, hidden)  # used through its weight: the input is sparse
  enc2 = nn.Linear(hidden, 2 * latent)
  dec1, dec2 = nn.Linear(latent, hidden), nn.Linear(hidden, n_items)
  params = [p for m in (enc1, enc2, dec1, dec2) for p in m.parameters()]
  opt = torch.optim.Adam(params, lr=1e-3)

  def batch(i):
    lo = (i * batch_size) % max(x.shape[0] - batch_size, 1)
    b = sp.csr_matrix(x[lo:lo + batch_size], dtype=np.float32)
    norms = np.sqrt(np.asarray(b.multiply(b).sum(1)).ravel()).clip(1e-12)
    keep = np.random.default_rng(i).random(b.nnz) >= dropout
    rows = np.repeat(np.arange(b.shape[0]), np.diff(b.indptr))
    vals = b.data / norms[rows] * keep / (1 - dropout)
    t = lambda a, d: torch.from_numpy(np.ascontiguousarray(a, d))
    xin = torch.sparse_csr_tensor(t(b.indptr, np.int64), t(b.indices, np.int64),
                                  t(vals, np.float32), size=b.shape)
    return xin, t(rows, np.int64), t(b.indices, np.int64), t(b.data, np.float32)

  def step(xin, rows, cols, clicks):
    h = torch.tanh(torch.sparse.mm(xin, enc1.weight.t()) + enc1.bias)
    mu, logvar = enc2(h).chunk(2, dim=1)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    log_p = torch.log_softmax(dec2(torch.tanh(dec1(z))), dim=1)
    neg_ll = -(log_p[rows, cols] * clicks).sum() / xin.shape[0]
    kl = (0.5 * (-logvar + torch.exp(logvar) + mu ** 2 - 1)).sum(1).mean()
    loss = neg_ll + beta * kl
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  for i in range(warmup):
    step(*batch(i))
  staged = [batch(warmup + i) for i in range(n_steps)]
  t = time.perf_counter()
  for b in staged:
    loss = step(*b)
  float(loss)
  s = (time.perf_counter() - t) / n_steps
  return {'users_per_s': batch_size / s, 'step_s': s, 'version': torch.__version__,
          'threads': torch.get_num_threads(), 'loss': float(loss)}
