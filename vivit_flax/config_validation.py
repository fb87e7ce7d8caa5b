"""Checks a config before anything is compiled: keys, types, values, batch sizes, data files, model.

Every problem raises `ConfigError` with a message that says what to change. The schema
below lists every key the project reads, with its accepted types; keys that only Scenic's
configs carry (its video pipeline, multicrop evaluation, debug modes) are accepted so those
configs load, and the ones a config sets are named in one warning (`UNUSED_SCENIC_KEYS`). Rules that
belong to another module are not restated here: the dataset modules resolve data paths and
report missing files, the model checks its own options and, traced abstractly on the
dataset's input shape, whether its patches tile the input, and train_utils checks the
learning-rate schedule and optimizer.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from vivit_flax import datasets, default_config, model, train_utils
from vivit_flax.config_checks import (
    check_choice,
    check_fraction,
    check_non_negative,
    check_positive,
)
from vivit_flax.datasets import medmnist3d, npz_video, synthetic


class ConfigError(ValueError):
  """The config asks for something this project cannot do; the message says what to change."""


# Scenic keys default_config accepts but nothing here reads, each with the value that asks for what
# this project does anyway (None: any value asks for something it does not do). `validate`
# names, in one warning, every one a config sets to something else.
UNUSED_SCENIC_KEYS: dict[str, Any] = {
    'dataset_configs.base_dir': None,
    'dataset_configs.tables': None,
    'dataset_configs.examples_per_subset': None,
    'dataset_configs.num_classes': None,
    'dataset_configs.num_frames': None,
    'dataset_configs.stride': None,
    'dataset_configs.min_resize': None,
    'dataset_configs.crop_size': None,
    'dataset_configs.one_hot_labels': None,
    'dataset_configs.zero_centering': None,
    'dataset_configs.do_multicrop_test': False,
    'dataset_configs.log_test_epochs': None,
    'dataset_configs.num_test_clips': None,
    'dataset_configs.test_batch_size': None,
    'dataset_configs.do_three_spatial_crops': False,
    'dataset_configs.augmentation_params': None,
    'multicrop_clips_per_device': None,
    'debug_train': False,
    'debug_eval': False,
}

# Values that the config's parts check when they are built (the model its options, train_utils
# its schedule and optimizer, each with config_checks) are not restated here. These are the
# trainer's, and the dataset's (the lists datasets.get_dataset checks, here before any data file
# is looked up).
CHOICES = {
    'dataset_name': tuple(datasets.LOADERS),
    # Scenic's name for the trainer of its ViViT project, the one this project implements.
    'trainer_name': ('vivit_trainer',),
    'data_dtype_str': datasets.DATA_DTYPES,
}

POSITIVE = (
    'batch_size',
    'eval_batch_size',
    'num_training_epochs',
    'num_training_steps',
    'log_summary_steps',
    'log_eval_steps',
    'checkpoint_steps',
    'max_checkpoints_to_keep',
    'dataset_configs.num_workers',
    'dataset_configs.prefetch_to_device',
)
FRACTIONS = ('ema_decay',)
# Validation scores a best checkpoint can be chosen by (always maximised).
BEST_CHECKPOINT_METRICS = (
    'accuracy',
    'balanced_accuracy',
    'auc',
    'top_5_accuracy',
)
# jax.random.PRNGKey keeps 32 bits of the seed: larger seeds repeat smaller ones.
MAX_SEED = 2**32 - 1
_MISSING = object()


def _get(config, path: str, default=None):
  node = config
  for part in path.split('.'):
    if node is None or part not in node:
      return default
    node = node[part]
  return node


def _check_values(config: ml_collections.ConfigDict) -> None:
  for path in default_config.REQUIRED:
    if _get(config, path, _MISSING) in (_MISSING, None):
      raise ConfigError(f'config.{path} is missing; set it in the config file.')
  if not (
      config.get('num_training_steps') or config.get('num_training_epochs')
  ):
    raise ConfigError(
        'Set config.num_training_steps or config.num_training_epochs.'
    )
  for path, allowed in CHOICES.items():
    check_choice(f'config.{path}', _get(config, path, allowed[0]), allowed)
  for path in POSITIVE:
    check_positive(f'config.{path}', _get(config, path))
  for path in FRACTIONS:
    check_fraction(f'config.{path}', _get(config, path))
  if not 0 <= config.rng_seed <= MAX_SEED:
    raise ConfigError(
        f'config.rng_seed={config.rng_seed} must be in [0, {MAX_SEED}].'
    )
  size = config.model.patches.size
  if not size or any(
      isinstance(s, bool) or not isinstance(s, int) for s in size
  ):
    raise ConfigError(
        f'config.model.patches.size={tuple(size)!r} must be ints (h, w, t).'
    )
  if config.get('best_checkpoint_metric') is not None:
    check_choice(
        'config.best_checkpoint_metric',
        config.best_checkpoint_metric,
        BEST_CHECKPOINT_METRICS,
    )
  axes = tuple(config.get('tta_flip_axes') or ())
  if any(a not in (0, 1, 2) or isinstance(a, bool) for a in axes) or len(
      set(axes)
  ) < len(axes):
    raise ConfigError(
        f'config.tta_flip_axes={axes!r} must be distinct volume axes among 0 '
        '(depth), 1 (height) and 2 (width).'
    )
  with _as_config_error():
    check_non_negative('config.tta_shift', config.get('tta_shift'))


def unused_keys(config: ml_collections.ConfigDict) -> list[str]:
  """The keys of `UNUSED_SCENIC_KEYS` that `config` sets to a value that would ask for something."""
  return [
      path
      for path, inert in UNUSED_SCENIC_KEYS.items()
      if _get(config, path) not in (None, inert)
  ]


def check_batch_sizes(
    config: ml_collections.ConfigDict, num_devices: int
) -> None:
  """Global batch sizes must split evenly over every device of every process."""
  for key in ('batch_size', 'eval_batch_size'):
    value = config.get(key)
    if value is not None and value % num_devices:
      lower = max(num_devices, value // num_devices * num_devices)
      raise ConfigError(
          f'config.{key}={value} is not divisible by the {num_devices} devices of this run; use '
          f'a multiple of {num_devices} such as {lower} or {lower + num_devices}.'
      )


@contextlib.contextmanager
def _as_config_error(where: str = ''):
  """Re-raises the ValueError (TypeError, OSError) of a part built from the config as a
  ConfigError, `where` appended to its message."""
  try:
    yield
  except ConfigError:
    raise
  except (ValueError, TypeError, OSError) as error:
    raise ConfigError(f'{error}{where}') from error


def _check_data_files(config: ml_collections.ConfigDict) -> None:
  """A data file that is missing and will not be fetched or generated fails with its loader's error."""
  dataset_configs = config.dataset_configs
  with _as_config_error():
    if config.dataset_name == 'medmnist3d':
      file_name, _, _ = medmnist3d.file_info(
          dataset_configs.get('name'), dataset_configs.get('size', 28)
      )
      path = medmnist3d.data_path(dataset_configs, file_name)
      if not os.path.exists(path) and not dataset_configs.get(
          'download', False
      ):
        medmnist3d.load(
            dataset_configs
        )  # Raises its FileNotFoundError: the path and the fix.
    elif config.dataset_name == 'npz_video':
      if not os.path.exists(
          os.path.expanduser(dataset_configs.get('path') or '')
      ):
        npz_video.load(
            dataset_configs
        )  # Raises: no path set, or the file does not exist.


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, ...] | None:
  """(-1, T, H, W, C) of the dataset's examples when the config alone fixes it, else None."""
  if config.dataset_name == 'medmnist3d':
    size = config.dataset_configs.get('size', 28)
    return (-1, size, size, size, 1)
  if config.dataset_name == 'synthetic3d':
    return (-1, synthetic.SIZE, synthetic.SIZE, synthetic.SIZE, 1)
  return None


def _check_model(config: ml_collections.ConfigDict) -> None:
  """Builds the model; where the input shape is known, traces its init and train-mode call
  abstractly (jax.eval_shape: shapes only, nothing compiled or computed)."""
  if (
      _get(config, 'model.attention_implementation') == 'cudnn'
      and jax.devices()[0].platform != 'gpu'
  ):
    raise ConfigError(
        "config.model.attention_implementation='cudnn' needs NVIDIA GPUs; this run "
        f"has {jax.devices()[0].platform} devices. Use None or 'xla'."
    )
  shape = input_shape(config)
  where = (
      f' (the inputs of dataset_name={config.dataset_name!r} are '
      f'{"x".join(map(str, shape[1:4]))} volumes)'
      if shape
      else ''
  )
  with _as_config_error(where):
    # num_classes only sizes the output layer; the dataset supplies the real count later.
    vivit = model.get_model_cls(config.model_name)(
        config, {'num_classes': 2} | ({'input_shape': shape} if shape else {})
    )
    if shape:
      jax.eval_shape(
          lambda x: vivit.flax_model.init(
              {
                  'params': jax.random.PRNGKey(0),
                  'dropout': jax.random.PRNGKey(1),
              },
              x,
              train=True,
          ),
          jax.ShapeDtypeStruct((1,) + shape[1:], jnp.float32),
      )


def _check_training(config: ml_collections.ConfigDict) -> None:
  """The learning-rate schedule and optimizer, built by the functions the trainer uses."""
  with _as_config_error():
    train_utils.create_optimizer(
        config, train_utils.create_learning_rate_fn(config, 1)
    )


def validate(
    config: ml_collections.ConfigDict, num_devices: int | None = None
) -> None:
  """Raises ConfigError for the first problem found in `config` (`num_devices`: default all).

  Logs one warning naming the Scenic keys it sets that this project does not use.
  """
  with _as_config_error():
    default_config.with_defaults(config)
    _check_values(config)
  unused = unused_keys(config)
  if unused:
    logging.warning(
        'These Scenic config keys have no effect in this project and are '
        'ignored: %s.',
        ', '.join(f'config.{path}' for path in unused),
    )
  check_batch_sizes(
      config, jax.device_count() if num_devices is None else num_devices
  )
  _check_data_files(config)
  _check_model(config)
  _check_training(config)
