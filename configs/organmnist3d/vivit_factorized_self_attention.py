r"""OrganMNIST3D, ViViT Model 3 (factorised self-attention), otherwise the Keras example's recipe.

Each of the 8 blocks attends over space, then over time, then applies its MLP.

  python main.py --config=configs/organmnist3d/vivit_factorized_self_attention.py --workdir=/tmp/organ_m3
"""

from configs.organmnist3d import vivit_keras_baseline


def get_config():
  """Model 3, spatial attention first as in the paper."""
  config = vivit_keras_baseline.get_config()
  config.experiment_name = 'organmnist3d_vivit_factorized_self_attention'
  config.model.attention_config.type = 'factorized_self_attention_block'
  config.model.attention_config.attention_order = 'spatial_temporal'
  return config
