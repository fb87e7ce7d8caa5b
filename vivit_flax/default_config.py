"""Every config key this project reads, with its default value and type.

An experiment config (configs/...) sets the keys it needs; `with_defaults` lays it over
`get_config()`, naming an unknown key with the closest known one and a value of the wrong
type with the type it must have. A key whose default is a placeholder also accepts None (its
reader picks a value then, or the option is off); `REQUIRED` keys have no default. Keys that
only Scenic's configs carry (its video pipeline, multicrop evaluation, debug modes) default to
None and take any value, so those configs load; `config_validation` names the ones that are set.
"""

from __future__ import annotations

import difflib
from typing import Any

import ml_collections
from ml_collections import config_dict


def _unset(value_type: type) -> config_dict.FieldReference:
  """A key of `value_type` that defaults to None (each key needs its own reference)."""
  return config_dict.placeholder(value_type)


def _transformer() -> dict[str, Any]:
  return dict(
      num_heads=_unset(int), mlp_dim=_unset(int), num_layers=_unset(int)
  )


# Scenic keys accepted so that Scenic's configs load, read by nothing here, each with the value
# that asks for what this project does anyway (None: any value asks for something it does not do).
UNUSED_SCENIC_KEYS: dict[str, Any] = {
    **{
        f'dataset_configs.{key}': None
        for key in (
            'base_dir',
            'tables',
            'examples_per_subset',
            'num_classes',
            'num_frames',
            'stride',
            'min_resize',
            'crop_size',
            'one_hot_labels',
            'zero_centering',
            'log_test_epochs',
            'num_test_clips',
            'test_batch_size',
            'augmentation_params',
        )
    },
    'dataset_configs.do_multicrop_test': False,
    'dataset_configs.do_three_spatial_crops': False,
    'multicrop_clips_per_device': None,
    'debug_train': False,
    'debug_eval': False,
}

# Keys without a default: validation fails while one is unset.
REQUIRED = (
    'dataset_name',
    'dataset_configs',
    'model_name',
    'model.hidden_size',
    'model.patches.size',
    'optimizer',
    'lr_configs.base_learning_rate',
    'batch_size',
    'rng_seed',
)


def get_config() -> ml_collections.ConfigDict:
  """The default of every key; None for the `REQUIRED` ones."""
  return ml_collections.ConfigDict(
      dict(
          experiment_name='',
          dataset_name=_unset(str),
          dataset_configs=dict(
              name=_unset(str),  # medmnist3d: the MedMNIST 3D set.
              size=28,  # medmnist3d: 28 or 64.
              data_dir=_unset(str),  # None: $MEDMNIST_ROOT, else ~/.medmnist.
              download=False,
              path=_unset(str),  # npz_video, synthetic3d: the .npz file.
              prefetch_to_device=2,
              num_workers=_unset(int),  # None: as many as the host has cores.
              # synthetic3d, when it generates its file (None: OrganMNIST3D's split sizes).
              seed=0,
              num_train=_unset(int),
              num_val=_unset(int),
              num_test=_unset(int),
              # k-fold cross-validation (datasets/folds.py): train + validation pooled into
              # num_folds stratified folds, fold `fold` (0..num_folds-1) validating. None: the
              # set's own validation split.
              num_folds=_unset(int),
              fold=_unset(int),
              # Volumes without labels (.npz files), added to the training split of masked
              # pretraining only (npz_video.read_unlabeled).
              unlabeled_files=(),
              augmentation=dict(
                  flip_axes=(),
                  rotate_planes=(),
                  max_rotation=0.0,
                  max_shift=0,
                  intensity=0.0,
                  mixup_alpha=0.0,
                  cutmix_alpha=0.0,
              ),
              **{
                  path.split('.')[1]: inert
                  for path, inert in UNUSED_SCENIC_KEYS.items()
                  if path.startswith('dataset_configs.')
              },
          ),
          data_dtype_str='float32',
          model_name=_unset(str),
          model=dict(
              hidden_size=_unset(int),
              patches=dict(size=_unset(tuple), drop_remainder=False),
              stem=dict(features=(), strides=(), kernel_size=3, padding='SAME'),
              classifier='gap',
              representation_size=_unset(int),
              dropout_rate=0.1,
              attention_dropout_rate=0.1,
              stochastic_droplayer_rate=0.0,
              positional_embedding='learned_1d',
              temporal_encoding_config=dict(
                  method='3d_conv',
                  n_sampled_frames=_unset(int),
                  kernel_init_method=_unset(str),
              ),
              attention_config=dict(
                  type='spacetime', attention_order='time_space'
              ),
              # Models 1, 3 and 4; Model 2 reads the two transformers below.
              **_transformer(),
              spatial_transformer=_transformer(),
              temporal_transformer=_transformer(),
              attention_implementation=_unset(str),  # None: XLA's.
              cpu_fast_layers=_unset(
                  bool
              ),  # None: on when the backend is the CPU.
              return_prelogits=False,
              # The decoder of masked pretraining (masked_pretraining.py).
              decoder_config=dict(
                  hidden_size=64,
                  num_heads=4,
                  mlp_dim=256,
                  num_layers=2,
                  positional_embedding='learned_1d',
              ),
          ),
          model_dtype_str='float32',
          label_smoothing=_unset(float),
          l2_decay_factor=_unset(float),
          class_weighted_loss=False,
          trainer_name='vivit_trainer',
          # Masking and target of masked pretraining (trainer_name='vivit_mae_pretrainer').
          masked_feature_loss=dict(
              token_mask_probability=0.9,
              mask_type='random',
              normalise_targets=True,
          ),
          optimizer=_unset(str),
          optimizer_configs=dict(
              beta1=0.9,
              beta2=0.999,
              epsilon=1e-8,
              weight_decay=1e-4,
              momentum=0.9,
              nesterov=False,
          ),
          max_grad_norm=_unset(float),
          num_training_epochs=_unset(int),
          num_training_steps=_unset(
              int
          ),  # Set, it wins over num_training_epochs.
          batch_size=_unset(int),
          eval_batch_size=_unset(int),  # None: batch_size.
          rng_seed=_unset(int),
          lr_configs=dict(
              learning_rate_schedule='compound',
              factors='constant',
              base_learning_rate=_unset(float),
              warmup_steps=_unset(int),
              steps_per_cycle=_unset(int),  # None: the whole run.
          ),
          log_summary_steps=_unset(int),  # None: every 50 steps.
          log_eval_steps=_unset(int),  # None: once an epoch.
          checkpoint_steps=_unset(int),  # None: at every evaluation.
          max_checkpoints_to_keep=3,
          write_summary=True,
          checkpoint=True,
          stop_on_nan=True,
          deterministic=False,
          ema_decay=_unset(float),  # None: no EMA of the parameters.
          best_checkpoint_metric=_unset(
              str
          ),  # None: keep the latest checkpoints only.
          tta_flip_axes=(),
          tta_shift=_unset(int),  # None or 0: no shift views.
          init_from=None,  # Scenic's: a ViT checkpoint to start from.
          **{
              path: inert
              for path, inert in UNUSED_SCENIC_KEYS.items()
              if '.' not in path
          },
      )
  )


def _declared_type(defaults: ml_collections.ConfigDict, key: str):
  """The type of `key`'s default; None for an untyped None (any value goes)."""
  if defaults[key] is not None:
    return type(defaults[key])
  try:
    return defaults.get_ref(key).get_type()  # An `_unset` placeholder.
  except ValueError:  # A plain None: ml_collections keeps no type for it.
    return None


def _check_type(path: str, value: Any, value_type, nullable: bool) -> None:
  """`value` for `path` must be of `value_type` (None too where `nullable`)."""
  if value_type is None or (value is None and nullable):
    return
  accepted = {float: (int, float), tuple: (tuple, list)}.get(
      value_type, (value_type,)
  )
  expected = (
      'tuple or list' if value_type is tuple else value_type.__name__
  ) + (' or None' if nullable else '')
  if value is None or (isinstance(value, bool) and value_type is not bool):
    got = 'None' if value is None else f'the bool {value!r}'
    raise ValueError(f'config.{path} must be {expected}; got {got}.')
  if not isinstance(value, accepted):
    raise ValueError(
        f'config.{path} must be {expected}; got {type(value).__name__} {value!r}.'
    )


def _lay_over(
    defaults: ml_collections.ConfigDict,
    section: ml_collections.ConfigDict,
    prefix: str,
) -> None:
  """Sets each key of `section` in `defaults`, checking its name and type."""
  for key in section.keys():
    path = f'{prefix}{key}'
    if key not in defaults:
      close = difflib.get_close_matches(key, list(defaults), n=1)
      hint = (
          f' Did you mean config.{prefix}{close[0]}?'
          if close
          else f' Known keys here: {", ".join(sorted(defaults))}.'
      )
      raise ValueError(f'Unknown config key config.{path}.{hint}')
    value, default = section[key], defaults[key]
    if isinstance(default, ml_collections.ConfigDict):
      if value is None:
        continue  # An unset section: its defaults.
      if not isinstance(value, (ml_collections.ConfigDict, dict)):
        raise ValueError(
            f'config.{path} must be a ConfigDict of {", ".join(sorted(default))}; '
            f'got {value!r}.'
        )
      _lay_over(default, ml_collections.ConfigDict(value), f'{path}.')
      continue
    if value is None and path in REQUIRED:
      continue  # Reported as missing by config_validation.
    value_type = _declared_type(defaults, key)
    _check_type(
        path, value, value_type, default is None and path not in REQUIRED
    )
    defaults[key] = tuple(value) if isinstance(value, list) else value


def with_defaults(
    config: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """`config` laid over `get_config()`: every key present, each of the declared type.

  Raises ValueError for a key `get_config()` lacks (naming the closest one) or a value of
  another type. The result is locked: reading or setting an unknown key fails.
  """
  merged = get_config()
  _lay_over(merged, config, '')
  merged.lock()
  return merged
