"""Checks a config before anything is created or compiled, by asking each part to check its own.

Every problem raises `ConfigError` with a message that says what to change. The keys and their
types are default_config's; each rule on values belongs to the part that reads the value:
`datasets.check_config` (names, batch sizes over the devices, data files), `trainer.check_config`
(seed, intervals, best-checkpoint metric), `train_utils.check_config` (run length, schedule,
optimizer, parameter average, test-time views) and the model, built and traced abstractly on
the dataset's input shape (its options, and whether its patches tile the input). Scenic keys this
project accepts but does not use are named in one warning.
"""

from __future__ import annotations

import contextlib
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from vivit_flax import datasets, default_config, masked_pretraining, model, train_utils, trainer


class ConfigError(ValueError):
  """The config asks for something this project cannot do; the message says what to change."""


def _value_at(config: ml_collections.ConfigDict, path: str):
  """The value of dotted key `path` in `config`, which has default_config's keys."""
  for part in path.split('.'):
    config = config[part]
  return config


def unused_keys(config: ml_collections.ConfigDict) -> list[str]:
  """The keys of `default_config.UNUSED_SCENIC_KEYS` that `config` (with default_config's keys)
  sets to a value that would ask for something."""
  return [
      path
      for path, inert in default_config.UNUSED_SCENIC_KEYS.items()
      if _value_at(config, path) not in (None, inert)
  ]


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


def _check_required(config: ml_collections.ConfigDict) -> None:
  """Every `default_config.REQUIRED` key is set (`config` has the defaults laid under it)."""
  for path in default_config.REQUIRED:
    if _value_at(config, path) is None:
      raise ConfigError(f'config.{path} is missing; set it in the config file.')


def _check_model(config: ml_collections.ConfigDict) -> None:
  """Builds the model; where the input shape is known, traces its init and train-mode call
  abstractly (jax.eval_shape: shapes only, nothing compiled or computed)."""
  shape = datasets.input_shape(config)
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


def validate(
    config: ml_collections.ConfigDict, num_devices: int | None = None
) -> None:
  """Raises ConfigError for the first problem found in `config` (`num_devices`: default all).

  Logs one warning naming the Scenic keys it sets that this project does not use.
  """
  process_count, local_device_count = (
      (jax.process_count(), jax.local_device_count())
      if num_devices is None
      else (1, num_devices)
  )
  with _as_config_error():
    complete = default_config.with_defaults(config)
    _check_required(complete)
    datasets.check_config(complete, process_count, local_device_count)
    trainer.check_config(complete)
    train_utils.check_config(complete)
  unused = unused_keys(complete)
  if unused:
    logging.warning(
        'These Scenic config keys have no effect in this project and are '
        'ignored: %s.',
        ', '.join(f'config.{path}' for path in unused),
    )
  _check_model(complete)
  shape = datasets.input_shape(complete)
  if complete.trainer_name == masked_pretraining.TRAINER_NAME and shape:
    with _as_config_error():
      masked_pretraining.check_config(complete, shape)
  with _as_config_error(' (in config.init_from.masked_pretraining)'):
    stage = masked_pretraining.pretraining_stage(complete, '')
  if stage is not None:
    validate(stage[0], num_devices)
