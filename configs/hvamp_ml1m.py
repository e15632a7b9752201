"""H+Vamp (Gated) (experiments/hvamp.py) on MovieLens 1M, configs/ml1m.py's split.

  python -m vaecf.main --config=configs/hvamp_ml1m.py --config.data.path=PATH/ml-1m \
      --workdir=DIR

The authors' settings (psywaves/EVCF 4a7b66a, experiment.py defaults and the README's
H+Vamp+Gate command; the paper has no ML-1M run): hidden 600, num_layers 2, z1 = z2 = 200,
gated, 1000 pseudo-inputs initialised N(0.05, 0.01), dropout 0.5, AdamNormGrad lr 5e-4,
batch 200, 400 epochs, warm-up of beta over 100 epochs to max_beta. max_beta 0.3 is the
README's (its Netflix command; experiment.py's default is 1.0).

vaecf anneals per step, beta = min(anneal_cap, step / total_anneal_steps): with 4,834
training users this split has 25 steps an epoch (24 of 200 and one of 34), so the cap is
reached after 100 epochs at total_anneal_steps = 100 * 25 / anneal_cap. Changing the cap
or the batch size, change it too.

train.epochs = 65 is what an hour buys on the 2 shared CPU cores this was first run on
(~50 s an epoch, validation ~1 s of it): the run stops inside the warm-up, at beta 0.195.
The authors' schedule is --config.train.epochs=400 (they stop early after 50 epochs
without a better validation NDCG; vaecf keeps the best evaluated epoch).
"""
from vaecf.config import base_config

WARMUP_EPOCHS = 100
STEPS_PER_EPOCH = 25  # ceil(4834 / 200) on configs/ml1m.py's split
MAX_BETA = 0.3


def get_config():
  c = base_config()
  c.data.name = 'ml-1m'  # configs/ml1m.py's data and split
  c.data.rating_threshold = 3.5
  c.data.min_user_count = 5
  c.data.n_heldout_users = 600
  c.model.module = 'experiments.hvamp'
  c.model.name = 'hvamp'
  c.model.hidden_dims = (600, 600)  # hidden_size 600, num_layers 2
  c.model.latent_dim = 200  # z1_size
  c.model.z2_dim = 200
  c.model.n_pseudo_inputs = 1000  # number_components
  c.model.pseudo_inputs_mean = 0.05
  c.model.pseudo_inputs_std = 0.01
  c.model.gated = True
  c.model.dropout_rate = 0.5
  c.model.likelihood = 'multinomial'  # the README's command: binary (= 'logistic')
  c.train.learning_rate = 5e-4
  c.train.batch_size = 200
  c.train.epochs = 65  # the authors: 400 (see above)
  c.train.eval_every = 1  # as the authors; ~2% of an epoch here
  c.train.anneal_cap = MAX_BETA
  # An int field: 8333 puts the cap at step 2499.9, the end of epoch 100.
  c.train.total_anneal_steps = round(WARMUP_EPOCHS * STEPS_PER_EPOCH / MAX_BETA)
  return c
