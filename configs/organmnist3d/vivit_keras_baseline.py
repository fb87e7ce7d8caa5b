r"""OrganMNIST3D with the recipe of the Keras "Video Vision Transformer" example.

Model 1 (spatio-temporal attention) on 28^3 volumes (depth = time): 8x8x8 tubelets
(the Keras Conv3D drops the trailing 4 voxels of each axis: 3x3x3 = 27 tokens), hidden 128,
8 heads, 8 layers, MLP 512, global average pooling; Adam at a constant 1e-4, batch 32, 60 epochs.

  python main.py --config=configs/organmnist3d/vivit_keras_baseline.py --workdir=/tmp/organ

Reads `organmnist3d.npz` from config.dataset_configs.data_dir, else $MEDMNIST_ROOT, else
~/.medmnist. Offline, fetch it elsewhere (`python -m medmnist download`, or the URL in the
error message) and copy it there; online, add --config.dataset_configs.download=True.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config():
  """The Keras example's recipe for OrganMNIST3D."""
  config = ml_collections.ConfigDict()
  config.experiment_name = 'organmnist3d_vivit_keras_baseline'

  # Dataset.
  config.dataset_name = 'medmnist3d'
  config.dataset_configs = ml_collections.ConfigDict()
  config.dataset_configs.name = 'organmnist3d'
  config.dataset_configs.size = 28
  config.dataset_configs.data_dir = placeholder(
      str
  )  # None: $MEDMNIST_ROOT, ~/.medmnist
  config.dataset_configs.download = False
  config.dataset_configs.path = placeholder(str)
  config.dataset_configs.prefetch_to_device = 2
  # k-fold cross-validation (benchmarks/accuracy.py --folds); None: the set's own validation split.
  config.dataset_configs.num_folds = placeholder(int)
  config.dataset_configs.fold = placeholder(int)
  # The Keras example augments nothing; every option here is off.
  config.dataset_configs.augmentation = ml_collections.ConfigDict()
  config.dataset_configs.augmentation.flip_axes = ()
  config.dataset_configs.augmentation.rotate_planes = ()
  config.dataset_configs.augmentation.max_shift = 0
  config.dataset_configs.augmentation.intensity = 0.0
  config.dataset_configs.augmentation.mixup_alpha = 0.0
  config.dataset_configs.augmentation.cutmix_alpha = 0.0
  config.data_dtype_str = 'float32'

  # Model: ViViT Model 1, sized as the Keras example.
  config.model_name = 'vivit_classification'
  config.model = ml_collections.ConfigDict()
  config.model.attention_config = ml_collections.ConfigDict()
  config.model.attention_config.type = 'spacetime'
  config.model.hidden_size = 128
  config.model.num_heads = 8
  config.model.mlp_dim = 512
  config.model.num_layers = 8
  config.model.patches = ml_collections.ConfigDict()
  config.model.patches.size = (8, 8, 8)
  config.model.patches.drop_remainder = True
  config.model.temporal_encoding_config = ml_collections.ConfigDict()
  config.model.temporal_encoding_config.method = '3d_conv'
  config.model.temporal_encoding_config.kernel_init_method = placeholder(str)
  config.model.positional_embedding = 'learned_1d'
  config.model.classifier = 'gap'
  config.model.representation_size = placeholder(int)
  config.model.dropout_rate = 0.0
  config.model.attention_dropout_rate = 0.1
  config.model.stochastic_droplayer_rate = 0.0
  config.model_dtype_str = 'float32'

  # Training.
  config.trainer_name = 'vivit_trainer'
  config.optimizer = 'adam'
  config.optimizer_configs = ml_collections.ConfigDict()
  config.optimizer_configs.beta1 = 0.9
  config.optimizer_configs.beta2 = 0.999
  config.optimizer_configs.epsilon = 1e-7  # Keras' Adam default.
  config.l2_decay_factor = placeholder(float)
  config.max_grad_norm = placeholder(float)
  config.label_smoothing = placeholder(float)
  config.class_weighted_loss = (
      False  # True: cross-entropy weighted n / (classes * class count).
  )
  config.ema_decay = placeholder(
      float
  )  # e.g. 0.999: evaluate/serve a debiased parameter EMA.
  config.num_training_epochs = 60
  config.num_training_steps = placeholder(int)  # Overrides the epochs when set.
  config.batch_size = 32
  config.eval_batch_size = 64
  config.rng_seed = 0

  config.lr_configs = ml_collections.ConfigDict()
  config.lr_configs.learning_rate_schedule = 'compound'
  config.lr_configs.factors = 'constant'
  config.lr_configs.base_learning_rate = 1e-4
  config.lr_configs.warmup_steps = 0
  config.lr_configs.steps_per_cycle = placeholder(
      int
  )  # None: the total number of steps.

  # Logging, evaluation and checkpoints (None: once per epoch).
  config.log_summary_steps = 10
  config.log_eval_steps = placeholder(int)
  # Every 10 epochs (300 steps): an Orbax save of this small state costs about 0.4 s of the
  # two-core host, 10 % of a 4-second epoch; SIGTERM still checkpoints the current step.
  config.checkpoint_steps = 300
  config.max_checkpoints_to_keep = 3
  config.write_summary = True
  config.checkpoint = True
  # e.g. 'auc': also keep the best-on-validation state in <workdir>/checkpoints_best/.
  config.best_checkpoint_metric = placeholder(str)
  config.tta_flip_axes = ()  # e.g. (1, 2): average predictions over height/width flips.
  # e.g. 1: also average predictions over +-1-voxel shifts along each axis.
  config.tta_shift = 0
  config.stop_on_nan = True
  config.deterministic = (
      False  # True: also fixed reduction order on GPUs (slower).
  )
  return config
