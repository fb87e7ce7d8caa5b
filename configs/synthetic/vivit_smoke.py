r"""A tiny model on a small synthetic set: seconds on a CPU; used by the tests.

  python main.py --config=configs/synthetic/vivit_smoke.py --workdir=/tmp/vivit_smoke \
      --config.dataset_configs.data_dir=/tmp/vivit_smoke_data
"""

from configs.organmnist3d import vivit_keras_baseline


def get_config():
  """Two layers of width 32 on 16 train batches of 8 synthetic volumes."""
  config = vivit_keras_baseline.get_config()
  config.experiment_name = 'synthetic3d_vivit_smoke'
  config.dataset_name = 'synthetic3d'
  config.dataset_configs.num_train = 128
  config.dataset_configs.num_val = 40
  config.dataset_configs.num_test = 44
  config.model.hidden_size = 32
  config.model.num_heads = 4
  config.model.mlp_dim = 64
  config.model.num_layers = 2
  config.model.patches.size = (7, 7, 7)
  config.model.patches.drop_remainder = False
  config.model.attention_dropout_rate = 0.0
  config.num_training_epochs = 2
  config.batch_size = 8
  config.eval_batch_size = 16
  config.lr_configs.base_learning_rate = 1e-3
  config.log_summary_steps = 4
  return config
