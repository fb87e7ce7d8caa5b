r"""Masked pretraining of the smoke config's tiny ViViT on its synthetic set: seconds on a CPU;
used by the tests.

  python main.py --config=configs/synthetic/vivit_mae_smoke.py --workdir=/tmp/vivit_mae_smoke \
      --config.dataset_configs.data_dir=/tmp/vivit_smoke_data
"""

import ml_collections

from configs.synthetic import vivit_smoke


def get_config():
  """The smoke config's model and data, trained to reconstruct masked tubelets."""
  config = vivit_smoke.get_config()
  config.experiment_name = 'synthetic3d_vivit_mae_smoke'
  config.trainer_name = 'vivit_mae_pretrainer'
  config.masked_feature_loss = ml_collections.ConfigDict(
      dict(token_mask_probability=0.75, mask_type='random')
  )
  config.model.decoder_config = ml_collections.ConfigDict(
      dict(hidden_size=24, num_heads=2, mlp_dim=48, num_layers=1)
  )
  return config
