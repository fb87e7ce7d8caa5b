"""Prediction from a trained workdir: `load_predictor(workdir)(volumes) -> class probabilities`."""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vivit_flax import checkpoints, default_config, model, train_utils
from vivit_flax.datasets import augmentation


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved as `<workdir>/config.json`, with default_config's defaults."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} does not exist: {workdir} is not a training workdir.'
    )
  with open(path) as f:
    return default_config.with_defaults(ml_collections.ConfigDict(json.load(f)))


def load_predictor(
    workdir: str,
    checkpoint: str = 'best',
    *,
    moving_average: bool = True,
    tta_flip_axes: tuple[int, ...] | None = None,
    tta_shift: int | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
  """A function from volumes to class probabilities, using a checkpoint in `workdir`.

  `checkpoint`: 'best' (the best-on-validation one that config.best_checkpoint_metric kept,
  else the newest) or 'latest' (the newest). By default it predicts as evaluation scored:
  with the moving-average parameters where the run kept them, and averaging over the flips
  of config.tta_flip_axes and the shifts of config.tta_shift (`train_utils.predict`).
  `moving_average=False` serves the optimizer's own parameters instead; `tta_flip_axes`
  (e.g. `()` for none) and `tta_shift` (0 for none) replace the config's.

  The function takes uint8 volumes `[N, T, H, W]` or `[N, T, H, W, C]` (depth first, as
  MedMNIST stores them; float input is taken as already scaled to [0, 1]) and returns
  float32 probabilities `[N, num_classes]`.
  """
  config = load_config(workdir)
  params, meta = checkpoints.restore_params(
      workdir, checkpoint, moving_average=moving_average
  )
  meta['input_shape'] = tuple(meta['input_shape'])
  flax_model = model.get_model_cls(config.model_name)(config, meta).flax_model
  if tta_flip_axes is None:
    tta_flip_axes = config.tta_flip_axes
  flip_axes = tuple(tta_flip_axes)
  if tta_shift is None:
    tta_shift = config.tta_shift or 0
  train_utils.check_evaluation_options(flip_axes, tta_shift)
  expected = meta['input_shape'][1:]

  @jax.jit
  def probabilities(x):
    return train_utils.predict(
        flax_model.apply, params, x, flip_axes, tta_shift
    )[1]

  def predict(volumes: np.ndarray) -> np.ndarray:
    volumes = np.asarray(volumes)
    if volumes.ndim == len(expected):
      volumes = volumes[..., None]
    if volumes.shape[1:] != expected:
      raise ValueError(
          f'Expected volumes of shape [N, {", ".join(map(str, expected[:-1]))}] or '
          f'[N, {", ".join(map(str, expected))}]; got {volumes.shape}.'
      )
    x = augmentation.as_float_volumes(volumes)
    return np.asarray(probabilities(jnp.asarray(x)))

  return predict
