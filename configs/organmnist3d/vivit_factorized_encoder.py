r"""OrganMNIST3D, ViViT Model 2 (factorised encoder), otherwise the Keras example's recipe.

A spatial transformer over the 3x3 tubelets of each time index, then a temporal transformer
over the 3 per-time representations.

  python main.py --config=configs/organmnist3d/vivit_factorized_encoder.py --workdir=/tmp/organ_m2
"""

from configs.organmnist3d import vivit_keras_baseline


def get_config():
  """Model 2 with 4 spatial and 4 temporal layers of the baseline's width."""
  config = vivit_keras_baseline.get_config()
  config.experiment_name = 'organmnist3d_vivit_factorized_encoder'
  config.model.attention_config.type = 'factorized_encoder'
  config.model.spatial_transformer = dict(
      num_heads=8, mlp_dim=512, num_layers=4
  )
  config.model.temporal_transformer = dict(
      num_heads=8, mlp_dim=512, num_layers=4
  )
  return config
