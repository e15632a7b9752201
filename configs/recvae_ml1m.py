"""RecVAE (experiments/recvae.py) on MovieLens 1M, configs/ml1m.py's split.

  python -m vaecf.main --config=configs/recvae_ml1m.py --config.data.path=PATH/ml-1m \
      --workdir=DIR [--config.model.gamma=0.0035]

The authors' settings (ilya-shenbin/RecVAE master, run.py): 5 x 600 encoder, latent 200,
dropout 0.5, Adam 5e-4 for each of the encoder and the decoder, batch 500, 3 encoder
passes and 1 decoder pass an epoch, gamma 0.005 for ML-20M. On ML-1M gamma and the epoch
are chosen on validation NDCG@100 (README); the authors ran 50 epochs on ML-20M, whose
epochs hold 28 times as many steps, so ML-1M gets more.
"""
from vaecf.config import base_config


def get_config():
  c = base_config()
  c.data.name = 'ml-1m'  # configs/ml1m.py's data and split
  c.data.rating_threshold = 3.5
  c.data.min_user_count = 5
  c.data.n_heldout_users = 600
  c.model.module = 'experiments.recvae'
  c.model.name = 'recvae'
  c.model.hidden_dims = (600,) * 5
  c.model.latent_dim = 200
  c.model.dropout_rate = 0.5
  c.model.gamma = 0.005  # KL weight per click: beta_u = gamma * |x_u|
  c.model.layer_norm_eps = 0.1  # master (wsdm: 1e-5)
  c.model.encoder_passes = 3
  c.model.decoder_passes = 1
  c.train.learning_rate = 5e-4
  c.train.batch_size = 500
  c.train.epochs = 300
  return c
