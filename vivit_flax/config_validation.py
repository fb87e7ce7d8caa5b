"""Checks a config before anything is compiled: unknown keys, types, values, batch and patch sizes.

Every problem raises `ConfigError` with a message that says what to change. The schema
below lists every key the project reads, with its accepted types; keys that only Scenic's
configs carry (augmentation, multicrop evaluation, ...) are accepted and ignored.
"""

from __future__ import annotations

import difflib
from typing import Any

import ml_collections

_INT = (int,)
_NUM = (int, float)
_STR = (str,)
_BOOL = (bool,)
_NONE = (type(None),)
_SEQ = (tuple, list)


class ConfigError(ValueError):
  """The config asks for something this project cannot do; the message says what to change."""


# Key -> accepted types. A nested ConfigDict is a dict here. '*' accepts any value.
SCHEMA: dict[str, Any] = {
    'experiment_name': _STR,
    'dataset_name': _STR,
    'dataset_configs': {
        'name': _STR, 'size': _INT, 'data_dir': _STR + _NONE, 'download': _BOOL,
        'path': _STR + _NONE, 'prefetch_to_device': _INT, 'seed': _INT,
        'num_train': _INT, 'num_val': _INT, 'num_test': _INT,
        # Scenic video-dataset keys, accepted so its configs load unchanged.
        'base_dir': '*', 'tables': '*', 'examples_per_subset': '*', 'num_classes': '*',
        'num_frames': '*', 'stride': '*', 'min_resize': '*', 'crop_size': '*',
        'one_hot_labels': '*', 'zero_centering': '*', 'do_multicrop_test': '*',
        'log_test_epochs': '*', 'num_test_clips': '*', 'test_batch_size': '*',
        'do_three_spatial_crops': '*', 'augmentation_params': '*',
    },
    'data_dtype_str': _STR,
    'model_name': _STR,
    'model': {
        'hidden_size': _INT, 'num_heads': _INT, 'mlp_dim': _INT, 'num_layers': _INT,
        'patches': {'size': _SEQ, 'drop_remainder': _BOOL},
        'classifier': _STR, 'representation_size': _INT + _NONE,
        'dropout_rate': _NUM, 'attention_dropout_rate': _NUM, 'stochastic_droplayer_rate': _NUM,
        'positional_embedding': _STR,
        'temporal_encoding_config': {'method': _STR, 'n_sampled_frames': _INT,
                                     'kernel_init_method': _STR + _NONE},
        'attention_config': {'type': _STR, 'attention_order': _STR},
        'spatial_transformer': {'num_heads': _INT, 'mlp_dim': _INT, 'num_layers': _INT},
        'temporal_transformer': {'num_heads': _INT, 'mlp_dim': _INT, 'num_layers': _INT},
        'return_prelogits': _BOOL,
    },
    'model_dtype_str': _STR,
    'trainer_name': _STR,
    'optimizer': _STR,
    'optimizer_configs': {'beta1': _NUM, 'beta2': _NUM, 'epsilon': _NUM, 'weight_decay': _NUM,
                          'momentum': _NUM, 'nesterov': _BOOL},
    'l2_decay_factor': _NUM + _NONE,
    'max_grad_norm': _NUM + _NONE,
    'label_smoothing': _NUM + _NONE,
    'num_training_epochs': _INT,
    'num_training_steps': _INT + _NONE,
    'batch_size': _INT,
    'eval_batch_size': _INT + _NONE,
    'rng_seed': _INT,
    'lr_configs': {'learning_rate_schedule': _STR, 'factors': _STR, 'base_learning_rate': _NUM,
                   'warmup_steps': _INT + _NONE, 'steps_per_cycle': _INT + _NONE},
    'log_summary_steps': _INT + _NONE,
    'log_eval_steps': _INT + _NONE,
    'checkpoint_steps': _INT + _NONE,
    'max_checkpoints_to_keep': _INT,
    'write_summary': _BOOL,
    'checkpoint': _BOOL,
    'stop_on_nan': _BOOL,
    'init_from': '*',
    'multicrop_clips_per_device': '*',
    'debug_train': _BOOL,
    'debug_eval': _BOOL,
}

CHOICES = {
    'dataset_name': ('medmnist3d', 'synthetic3d', 'npz_video'),
    'model_name': ('vivit_classification',),
    'model_dtype_str': ('float32', 'bfloat16'),
    'data_dtype_str': ('float32',),
    'optimizer': ('adam', 'adamw', 'momentum'),
    'model.classifier': ('token', 'gap', 'gmp', 'gsp'),
    'model.positional_embedding': ('learned_1d', 'sinusoidal_3d', 'none'),
    'model.attention_config.type': ('spacetime', 'factorized_encoder',
                                    'factorized_self_attention_block',
                                    'factorized_dot_product_attention'),
    'model.attention_config.attention_order': ('spatial_temporal', 'temporal_spatial'),
    'model.temporal_encoding_config.method': ('3d_conv', 'temporal_sampling'),
    'model.temporal_encoding_config.kernel_init_method': (
        None, 'central_frame_initializer', 'average_frame_initializer'),
}

POSITIVE = ('batch_size', 'eval_batch_size', 'num_training_epochs', 'num_training_steps',
            'model.hidden_size', 'model.num_heads', 'model.mlp_dim', 'model.num_layers',
            'lr_configs.base_learning_rate', 'log_summary_steps', 'log_eval_steps',
            'checkpoint_steps', 'max_checkpoints_to_keep', 'max_grad_norm')
RATES = ('model.dropout_rate', 'model.attention_dropout_rate', 'model.stochastic_droplayer_rate',
         'label_smoothing')


def _type_names(types) -> str:
  return ' or '.join('None' if t is type(None) else t.__name__ for t in types)


def _check_keys(node: ml_collections.ConfigDict, schema: dict, prefix: str) -> None:
  for key in node.keys():
    path = f'{prefix}{key}'
    if key not in schema:
      close = difflib.get_close_matches(key, list(schema), n=1)
      hint = f' Did you mean config.{prefix}{close[0]}?' if close else (
          f' Known keys here: {", ".join(sorted(schema))}.')
      raise ConfigError(f'Unknown config key config.{path}.{hint}')
    expected, value = schema[key], node[key]
    if expected == '*':
      continue
    if isinstance(expected, dict):
      if value is None:
        continue
      if not isinstance(value, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f'config.{path} must be a ConfigDict of {", ".join(sorted(expected))}; '
                          f'got {value!r}.')
      _check_keys(ml_collections.ConfigDict(value) if isinstance(value, dict) else value,
                  expected, f'{path}.')
    elif isinstance(value, bool) and bool not in expected:
      raise ConfigError(f'config.{path} must be {_type_names(expected)}; got the bool {value!r}.')
    elif not isinstance(value, expected):
      raise ConfigError(f'config.{path} must be {_type_names(expected)}; got '
                        f'{type(value).__name__} {value!r}.')


def _get(config, path: str, default=None):
  node = config
  for part in path.split('.'):
    if node is None or part not in node:
      return default
    node = node[part]
  return node


def _check_values(config: ml_collections.ConfigDict) -> None:
  for path, allowed in CHOICES.items():
    value = _get(config, path, allowed[0])
    if value not in allowed:
      close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
      hint = f' Did you mean {close[0]!r}?' if close else ''
      raise ConfigError(f'config.{path}={value!r} is not one of '
                        f'{", ".join(repr(a) for a in allowed)}.{hint}')
  for path in POSITIVE:
    value = _get(config, path)
    if value is not None and value <= 0:
      raise ConfigError(f'config.{path}={value!r} must be positive.')
  for path in RATES:
    value = _get(config, path)
    if value is not None and not 0 <= value < 1:
      raise ConfigError(f'config.{path}={value!r} must be in [0, 1).')
  hidden, heads = _get(config, 'model.hidden_size'), _get(config, 'model.num_heads')
  if hidden and heads and hidden % heads:
    divisors = [h for h in range(1, hidden + 1) if hidden % h == 0 and h <= 64]
    raise ConfigError(f'config.model.num_heads={heads} does not divide config.model.hidden_size='
                      f'{hidden}; use one of {divisors}.')
  size = _get(config, 'model.patches.size')
  if size is not None and (len(size) != 3 or any(not isinstance(s, int) or s <= 0 for s in size)):
    raise ConfigError(f'config.model.patches.size={tuple(size)!r} must be three positive ints '
                      '(height, width, time).')


def check_batch_sizes(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Global batch sizes must split evenly over every device of every process."""
  for key in ('batch_size', 'eval_batch_size'):
    value = config.get(key)
    if value is not None and value % num_devices:
      lower = max(num_devices, value // num_devices * num_devices)
      raise ConfigError(
          f'config.{key}={value} is not divisible by the {num_devices} devices of this run; use '
          f'a multiple of {num_devices} such as {lower} or {lower + num_devices}.')


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError for the first problem found in `config`."""
  _check_keys(config, SCHEMA, '')
  _check_values(config)
  if num_devices is None:
    import jax  # pylint: disable=g-import-not-at-top
    num_devices = jax.device_count()
  check_batch_sizes(config, num_devices)
