r"""Sweep: learning rate x the four ViViT attention variants on OrganMNIST3D (12 points).

get_config() is the Keras example's recipe (configs/organmnist3d/vivit_keras_baseline.py) plus
the encoder sizes of Model 2 (a 4-layer spatial and a 4-layer temporal transformer, as deep in
total as the 8 layers of the other models; the other variants ignore them). get_hyper() sweeps
lr_configs.base_learning_rate over 3e-5, 1e-4 and 3e-4 and attention_config.type over Models 1-4.

  python -m vivit_flax.sweep --config=configs/organmnist3d/sweep_lr_variant.py \
      --workdir=/tmp/organ_sweep --parallel=2
"""

import ml_collections

from configs.organmnist3d import vivit_keras_baseline


def get_config():
  """The Keras baseline, with Model 2's spatial and temporal encoder sizes."""
  config = vivit_keras_baseline.get_config()
  config.experiment_name = 'organmnist3d_vivit_sweep_lr_variant'
  for name in ('spatial_transformer', 'temporal_transformer'):
    config.model[name] = ml_collections.ConfigDict(
        dict(num_heads=8, mlp_dim=512, num_layers=4)
    )
  return config


def get_hyper(hyper):
  """Every learning rate with every attention variant."""
  return hyper.product(
      [
          hyper.sweep(
              'config.lr_configs.base_learning_rate', [3e-5, 1e-4, 3e-4]
          ),
          hyper.sweep(
              'config.model.attention_config.type',
              [
                  'spacetime',
                  'factorized_encoder',
                  'factorized_self_attention_block',
                  'factorized_dot_product_attention',
              ],
          ),
      ]
  )
