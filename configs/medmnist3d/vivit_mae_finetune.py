r"""The recipe fine-tuned from masked-volume pretraining, in one command: main.py first pretrains
(configs/medmnist3d/vivit_mae_pretrain.py's settings) in `<workdir>/masked_pretraining`, on the
training split only, then fine-tunes the recipe from its tokeniser and encoder.

  python main.py --config=configs/medmnist3d/vivit_mae_finetune.py:adrenalmnist3d \
      --workdir=/tmp/adrenal_ft [--config.init_from.masked_pretraining.num_training_epochs=60]

To fine-tune from a pretraining run that exists already (Scenic's init_from), point at its
workdir instead: --config.init_from.checkpoint_path=/tmp/adrenal_mae (the stage is then skipped).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs.medmnist3d import vivit_mae_pretrain, vivit_recipe


def get_config(arg: str = 'adrenalmnist3d'):
  """The recipe for the MedMNIST 3D set `arg`, initialised by masked pretraining."""
  config = vivit_recipe.get_config(arg)
  config.experiment_name = config.experiment_name.replace(
      'vivit_recipe', 'vivit_mae_finetune'
  )
  config.init_from = ml_collections.ConfigDict(
      dict(
          checkpoint_path=placeholder(str),
          checkpoint_format='vivit',
          masked_pretraining=vivit_mae_pretrain.overrides(arg),
      )
  )
  return config
