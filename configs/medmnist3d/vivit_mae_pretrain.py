r"""Masked-volume pretraining (VideoMAE for 3D tubelets) of the recipe's ViViT on a MedMNIST 3D
set's training volumes, as Scenic's projects/av_mae lays out pretraining configs.

  python main.py --config=configs/medmnist3d/vivit_mae_pretrain.py:adrenalmnist3d \
      --workdir=/tmp/adrenal_mae
  python main.py --config=configs/medmnist3d/vivit_mae_finetune.py:adrenalmnist3d \
      --workdir=/tmp/adrenal_ft --config.init_from.checkpoint_path=/tmp/adrenal_mae

The argument is the recipe's ('name' or 'name,size'). The model, data and seed are the recipe's,
so the recipe's fine-tuning loads this run's tokeniser and encoder; `overrides` (also what
vivit_mae_finetune.py runs as its first stage) sets what pretraining changes: the run length, the
schedule, the masking and the decoder. Only the training split is trained on; validation and test
are scored by reconstruction loss, their labels unused.
"""

import ml_collections

from configs.medmnist3d import vivit_recipe
from vivit_flax import masked_pretraining


def overrides(arg: str = 'adrenalmnist3d') -> ml_collections.ConfigDict:
  """What masked pretraining changes in the recipe's config for the set `arg`."""
  del arg  # The same for every set and size: nothing here reads the data's nature.
  return ml_collections.ConfigDict(
      dict(
          # 64 tokens a volume: 75% masked leaves 16 visible (VideoMAE's 90% would leave 6).
          masked_feature_loss=dict(
              token_mask_probability=0.75,
              mask_type='random',
              normalise_targets=True,
          ),
          model=dict(
              decoder_config=dict(
                  hidden_size=64,
                  num_heads=4,
                  mlp_dim=128,
                  num_layers=2,
                  positional_embedding='learned_1d',
              )
          ),
          num_training_epochs=30,
          # 1e-3 rather than 5e-4: validation reconstruction loss after 1,110 steps 0.157 against
          # 0.164 (AdrenalMNIST3D; benchmarks/RESULTS.md, "Masked-volume pretraining").
          lr_configs=dict(base_learning_rate=1e-3, warmup_steps=100),
      )
  )


def get_config(arg: str = 'adrenalmnist3d'):
  """Masked pretraining of the recipe's ViViT on the MedMNIST 3D set `arg`."""
  recipe = vivit_recipe.get_config(arg)
  recipe.init_from = ml_collections.ConfigDict(
      dict(masked_pretraining=overrides(arg))
  )
  config, _ = masked_pretraining.pretraining_stage(recipe, '')
  return config
