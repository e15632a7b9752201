"""The default configuration: every knob the code reads is declared here.

Config files in configs/ start from `base_config()` and override; the entry
points lock the result, so a mistyped `--config.xyz` is an error.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from vaecf.common import VaecfError


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
  # Set (0 < f < 0.5): hold out round(f * users) per group instead; 0 or None: the count.
  c.data.heldout_fraction = config_dict.placeholder(float)
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
  c.model.module = ''  # a module to import first, e.g. experiments.swish_vae
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
  # Early stopping: end once the best validation NDCG@100 is this many epochs old (0: never).
  c.train.patience = 0
  # Training data on the device (vaecf.device_data): its own order, batches gathered there,
  # steps_per_dispatch steps a dispatch. auto: on an accelerator when it fits the budget;
  # on: wherever it fits (else the host pipeline, saying why); off: the host pipeline.
  c.train.device_data = 'auto'
  # Per device, for the CSR and one pass's order: an absolute size, so that a dataset is
  # fed the same way on every machine and backend (a CPU reports no memory to take a
  # fraction of); 2 GiB holds each paper dataset's CSR several times over.
  c.train.device_data_budget_gb = 2.0
  c.train.steps_per_dispatch = 16  # device data: steps in one jitted lax.scan

  c.eval = ml_collections.ConfigDict()
  # Metrics of every validation and test pass, 'name@K' (vaecf.evaluate.KINDS): recall,
  # ndcg, mrr, hit, precision, map and the catalogue's coverage.
  c.eval.metrics = ('recall@20', 'recall@50', 'ndcg@100')
  # The one that picks the best epoch, a tune's points and an ensemble's weights.
  c.eval.select = 'ndcg@100'  # vaecf.checkpoints.DEFAULT_SELECT

  c.sweep = ml_collections.ConfigDict()
  # Parallel sweeps (vaecf-sweep): one model per value, trained at once.
  c.sweep.mode = 'cap'  # cap: anneal to each cap | constant: fixed beta | anneal_steps
  c.sweep.caps = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)  # the values swept, whatever the mode
  # Any traced hyperparameters instead, as a grid (their product), e.g.
  # 'learning_rate=1e-3,3e-4;dropout_rate=0.3,0.5'; '' sweeps `mode` over `caps`.
  c.sweep.grid = ''

  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = False  # jax.distributed.initialize() before anything
  c.distributed.coordinator_address = ''  # '' lets JAX detect it (SLURM, TPU, ...)
  c.distributed.num_processes = config_dict.placeholder(int)
  c.distributed.process_id = config_dict.placeholder(int)
  return c


class ConfigError(VaecfError, ValueError):
  """A config value out of range or of the wrong kind; raised before anything is written."""


FORMATS = ('auto', 'movielens_csv', 'movielens_dat', 'movielens_100k', 'netflix', 'msd',
           'delimited')
LIKELIHOODS = ('multinomial', 'gaussian', 'logistic')
COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')
INPUT_LAYERS = ('sparse', 'dense')
SWEEP_MODES = ('cap', 'constant', 'anneal_steps')
DEVICE_DATA = ('auto', 'on', 'off')  # vaecf.device_data.MODES


def parse_grid(spec: str) -> dict[str, tuple[float, ...]]:
  """'knob=v,v;knob=v' -> {knob: (v, v), ...}, in order; '' -> {}.

  Raises ConfigError naming the part at fault. Only the form is checked here: whether a
  knob exists and its values are in range depends on the model (vaecf.sweep.check_points).
  """
  grid = {}
  for part in filter(None, (p.strip() for p in spec.split(';'))):
    name, sep, values = part.partition('=')
    name = name.strip()
    if not sep:
      raise ConfigError(f'{part!r} is not knob=value,value,... (knobs separated by ";")')
    if not name.isidentifier():
      raise ConfigError(f'{part!r}: {name!r} is not a knob name (knob=value,value,...)'
                        if name else f'{part!r} names no knob before "=" (knob=value,...)')
    if name in grid:
      raise ConfigError(f'{part!r}: knob {name!r} is given twice')
    texts = [v.strip() for v in values.split(',')]
    if not all(texts):
      raise ConfigError(f'{part!r}: an empty value; the values must be numbers separated '
                        'by "," (no trailing ",")')
    numbers = []
    for text in texts:
      try:
        numbers.append(float(text))
      except ValueError:
        raise ConfigError(f'{part!r}: {text!r} is not a number; the values must be numbers '
                          'separated by ","') from None
    grid[name] = tuple(numbers)
  return grid


def validate(config) -> None:
  """Raises ConfigError listing every out-of-range setting (the keys `base_config` declares).

  Called by every entry point before it reads data or touches a workdir, so a bad
  value costs nothing and is named, instead of failing deep inside a jitted step.
  """
  found = find_problems(config)
  if found:
    raise ConfigError('invalid config:\n  ' + '\n  '.join(found))


def find_problems(config) -> list[str]:
  """What `validate` refuses, one line each ('key=value: what it must be'); [] if none.
  A sweep names them per grid point (vaecf.sweep.check_points)."""
  import math
  problems = []

  def check(key: str, ok: bool, want: str):
    if not ok:
      section, name = key.split('.')
      problems.append(f'{key}={config[section][name]!r}: {want}')

  def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)

  def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

  d, m, t = config.data, config.model, config.train
  check('data.format', d.format in FORMATS, f'one of {FORMATS}')
  check('data.n_heldout_users', is_int(d.n_heldout_users) and d.n_heldout_users >= 1,
        'an integer >= 1 (users in each of the validation and test groups)')
  if d.heldout_fraction:
    check('data.heldout_fraction', finite(d.heldout_fraction) and 0 < d.heldout_fraction < 0.5,
          'a fraction in (0, 0.5) of the users for each held-out group, or 0/None for '
          'n_heldout_users')
  check('data.test_prop', finite(d.test_prop) and 0 < d.test_prop < 1,
        'a fraction in (0, 1): the share of a held-out user\'s items kept as targets')
  check('data.min_user_count', is_int(d.min_user_count) and d.min_user_count >= 0,
        'an integer >= 0')
  check('data.min_item_count', is_int(d.min_item_count) and d.min_item_count >= 0,
        'an integer >= 0')
  if d.rating_threshold is not None:
    check('data.rating_threshold', not math.isnan(d.rating_threshold),
          'a number (values above it are kept; -inf keeps every row) or None')
  check('model.latent_dim', is_int(m.latent_dim) and m.latent_dim >= 1, 'an integer >= 1')
  if m.hidden_dims is not None:
    check('model.hidden_dims', all(is_int(h) and h >= 1 for h in m.hidden_dims),
          'a tuple of integers >= 1 (or None for the model\'s default)')
  check('model.dropout_rate', finite(m.dropout_rate) and 0 <= m.dropout_rate < 1,
        'a rate in [0, 1): 1 would drop every input')
  check('model.likelihood', m.likelihood in LIKELIHOODS, f'one of {LIKELIHOODS}')
  if m.weight_decay is not None:
    check('model.weight_decay', finite(m.weight_decay) and m.weight_decay >= 0,
          'a number >= 0, or None for the model\'s default')
  check('model.compute_dtype', m.compute_dtype in COMPUTE_DTYPES, f'one of {COMPUTE_DTYPES}')
  check('model.input_layer', m.input_layer in INPUT_LAYERS, f'one of {INPUT_LAYERS}')
  check('train.epochs', is_int(t.epochs) and t.epochs >= 1, 'an integer >= 1')
  check('train.batch_size', is_int(t.batch_size) and t.batch_size >= 1, 'an integer >= 1')
  check('train.eval_batch_size', is_int(t.eval_batch_size) and t.eval_batch_size >= 1,
        'an integer >= 1')
  check('train.eval_every', is_int(t.eval_every) and t.eval_every >= 1,
        'an integer >= 1 (epochs between validation passes)')
  check('train.keep_latest', is_int(t.keep_latest) and t.keep_latest >= 1, 'an integer >= 1')
  check('train.learning_rate', finite(t.learning_rate) and t.learning_rate > 0,
        'a finite number > 0')
  check('train.total_anneal_steps', finite(t.total_anneal_steps) and t.total_anneal_steps > 0,
        'a number > 0 of steps')
  check('train.anneal_cap', finite(t.anneal_cap) and t.anneal_cap >= 0, 'a number >= 0')
  if t.constant_beta is not None:
    check('train.constant_beta', finite(t.constant_beta) and t.constant_beta >= 0,
          'a number >= 0, or None to anneal')
  check('train.patience', is_int(t.patience) and (t.patience == 0 or t.patience >= t.eval_every),
        'an integer number of epochs >= train.eval_every, or 0 for no early stopping')
  check('train.device_data', t.device_data in DEVICE_DATA, f'one of {DEVICE_DATA}')
  check('train.device_data_budget_gb',
        finite(t.device_data_budget_gb) and t.device_data_budget_gb > 0,
        'a finite number > 0 of GiB per device')
  check('train.steps_per_dispatch', is_int(t.steps_per_dispatch) and t.steps_per_dispatch >= 1,
        'an integer >= 1 (train steps in one dispatch of device-resident data)')
  e = config.eval
  try:
    from vaecf.evaluate import parse_metrics
    parse_metrics(e.metrics)
  except ValueError as err:
    problems.append(f'eval.metrics={tuple(e.metrics)!r}: {err}')
  check('eval.select', e.select in tuple(e.metrics),
        f'one of eval.metrics {tuple(e.metrics)} (the metric that picks the best epoch)')
  check('sweep.mode', config.sweep.mode in SWEEP_MODES, f'one of {SWEEP_MODES}')
  try:
    parse_grid(config.sweep.grid)
  except ValueError as e:
    problems.append(f'sweep.grid={config.sweep.grid!r}: {e}')
  return problems
