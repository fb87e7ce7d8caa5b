"""The configs benchmarks.throughput takes, and the clips and classes each one trains on.

A spec is a config file with its optional argument (`path.py[:arg]`, as main.py's --config takes
it) or `vivit_b/<attention type>`; `key=value` overrides
are applied as a sweep applies its points (`vivit_flax.config_overrides.apply_overrides`: every
key must exist, values keep their types).
"""

import ast

from ml_collections.config_dict import placeholder

from benchmarks import vivit_b
from vivit_flax import config_overrides, datasets
from vivit_flax.datasets import medmnist3d, synthetic


def parse_override(item):
  """(key, value) of a `key=value` override; the value is a Python literal, else a string."""
  key, _, text = item.partition('=')
  try:
    return key, ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return key, text


def load_config(spec, overrides=()):
  """The config named by `spec` with the `key=value` `overrides` (later ones win)."""
  if spec.startswith('vivit_b/'):
    config = vivit_b.get_config(spec.split('/', 1)[1])
  else:
    path, _, arg = spec.partition(':')
    module = config_overrides.load_module(path)
    config = module.get_config(arg) if arg else module.get_config()
  # The model reads model.attention_implementation with a default (None) that the config files
  # leave out; declared here so that an override can set it.
  if 'attention_implementation' not in config.model:
    config.model.attention_implementation = placeholder(str)
  return config_overrides.apply_overrides(
      config, dict(parse_override(item) for item in overrides)
  )


def input_spec(config):
  """(T, H, W, C) clips and class count the config trains on, without loading its data."""
  if config.get('experiment_name', '').startswith(vivit_b.EXPERIMENT_PREFIX):
    return vivit_b.INPUT, vivit_b.KINETICS_CLASSES
  shape = datasets.input_shape(config)
  if shape is None:
    raise ValueError(
        f'Give --input_shape and --num_classes for dataset {config.dataset_name!r}.'
    )
  if config.dataset_name == 'medmnist3d':
    info = medmnist3d.medmnist_info()[config.dataset_configs.name]
    return shape[1:], len(info['label'])
  return shape[1:], synthetic.NUM_CLASSES
