"""The default configuration: every knob the code reads is declared here.

Config files in configs/ start from `base_config()` and override; the entry
points lock the result, so a mistyped `--config.xyz` is an error.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  c.data.name = 'ml-latest-small'
  # A file or folder; '' means the embedded dataset (ml-latest-small) or, for a
  # MovieLens name, the GroupLens download in cache_dir.
  c.data.path = ''
  c.data.format = 'auto'  # movielens_csv|movielens_dat|movielens_100k|netflix|msd|delimited
  c.data.rating_threshold = config_dict.placeholder(float)  # keep value > threshold
  c.data.min_user_count = 5
  c.data.min_item_count = 0
  c.data.n_heldout_users = 60
  c.data.heldout_fraction = config_dict.placeholder(float)  # set (0 < f < 0.5): hold out round(f * users) per group instead
  c.data.split_seed = 98765
  c.data.test_prop = 0.2
  c.data.cache_dir = ''  # '' -> $VAECF_CACHE or ~/.cache/vaecf
  # Only for format='delimited': column names or 0-based numbers, and the separator.
  c.data.user_col = 'user'
  c.data.item_col = 'item'
  c.data.value_col = ''
  c.data.delimiter = ','

  c.model = ml_collections.ConfigDict()
  c.model.name = 'multvae'  # multvae | multdae | anything an experiment registers
  c.model.module = ''  # a module to import first, e.g. experiments.gated_vae
  c.model.hidden_dims = config_dict.placeholder(tuple)  # None: (600,) VAE, () DAE
  c.model.latent_dim = 200
  c.model.dropout_rate = 0.5
  c.model.likelihood = 'multinomial'  # multinomial | gaussian | logistic
  c.model.weight_decay = config_dict.placeholder(float)  # None: 0 VAE, 0.01/batch DAE
  c.model.compute_dtype = 'float32'  # bfloat16 for matmuls on accelerators
  c.model.input_layer = 'sparse'  # sparse: gather-sum from item ids | dense: [B, I] matmul

  c.train = ml_collections.ConfigDict()
  c.train.seed = 98765
  c.train.epochs = 200
  c.train.batch_size = 500
  c.train.learning_rate = 1e-3
  c.train.total_anneal_steps = 200000
  c.train.anneal_cap = 0.2
  c.train.constant_beta = config_dict.placeholder(float)  # set: no annealing
  c.train.eval_every = 1  # epochs between validation passes
  c.train.eval_batch_size = 2000
  c.train.keep_latest = 1  # checkpoints kept besides the best
  c.train.log_every_steps = 0  # 0: one console line per epoch only

  c.sweep = ml_collections.ConfigDict()
  # Parallel beta sweep (experiments/sweep_beta.py): one model per value, trained at once.
  c.sweep.mode = 'cap'  # cap: anneal to each cap | constant: fixed beta | anneal_steps
  c.sweep.caps = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)  # the values swept, whatever the mode

  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = False  # jax.distributed.initialize() before anything
  c.distributed.coordinator_address = ''  # '' lets JAX detect it (SLURM, TPU, ...)
  c.distributed.num_processes = config_dict.placeholder(int)
  c.distributed.process_id = config_dict.placeholder(int)
  return c
