r"""OrganMNIST3D, ViViT Model 4 (factorised dot-product attention), otherwise the Keras recipe.

In each block half of the 8 heads attend over space and half over time.

  python main.py --config=configs/organmnist3d/vivit_factorized_dot_product.py --workdir=/tmp/organ_m4
"""

from configs.organmnist3d import vivit_keras_baseline


def get_config():
  """Model 4."""
  config = vivit_keras_baseline.get_config()
  config.experiment_name = 'organmnist3d_vivit_factorized_dot_product'
  config.model.attention_config.type = 'factorized_dot_product_attention'
  return config
