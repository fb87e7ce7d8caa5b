"""Config files loaded as modules, and dotted-key overrides applied to their configs.

Shared by vivit_flax.sweep (its points) and the benchmarks (their `--set key=value` flags); kept
apart from sweep.py so that loading a config does not import the trainer.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
from typing import Any

import ml_collections


def load_module(config_path: str):
  """The config file at `config_path` as a module (its get_config(), get_hyper(), ...)."""
  spec = importlib.util.spec_from_file_location('_config_file', config_path)
  if spec is None:
    raise FileNotFoundError(f'Cannot load the config file {config_path}.')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: dict[str, Any]
) -> ml_collections.ConfigDict:
  """A copy of `config` with each dotted key of `overrides` set; every key must exist."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    node, parts = config, key.split('.')
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        known = (
            list(node.keys())
            if isinstance(node, ml_collections.ConfigDict)
            else []
        )
        close = difflib.get_close_matches(part, known, n=1)
        hint = f' Did you mean {".".join(parts[:i] + close)}?' if close else ''
        raise ValueError(
            f'Override key config.{key} is not in the base config.{hint}'
        )
      if i < len(parts) - 1:
        node = node[part]
    try:
      node[parts[-1]] = value
    except TypeError as error:
      raise ValueError(
          f'Override value config.{key}={value!r}: {error}'
      ) from error
  return config
