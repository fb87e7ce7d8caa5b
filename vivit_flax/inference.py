"""Prediction from a trained workdir: `load_predictor(workdir)(volumes) -> class probabilities`,
and `load_explainer(workdir)(volumes) -> (class probabilities, attention maps)`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import tqdm

from vivit_flax import (
    attention_maps,
    checkpoints,
    default_config,
    masked_pretraining,
    model,
    train_utils,
)
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


@dataclasses.dataclass(frozen=True)
class Served:
  """What a workdir serves: the model, its parameters, the test-time views and the input
  shape [T, H, W, C] of its volumes."""

  flax_model: model.ViViT
  params: Any
  flip_axes: tuple[int, ...]
  shift: int
  input_shape: tuple[int, ...]

  def model_input(self, volumes: np.ndarray) -> np.ndarray:
    """uint8 (or [0, 1] float) volumes [N, T, H, W] or [N, T, H, W, C] as float32 model input."""
    volumes = np.asarray(volumes)
    expected = self.input_shape
    if volumes.ndim == len(expected):
      volumes = volumes[..., None]
    if volumes.shape[1:] != expected:
      raise ValueError(
          f'Expected volumes of shape [N, {", ".join(map(str, expected[:-1]))}] or '
          f'[N, {", ".join(map(str, expected))}]; got {volumes.shape}.'
      )
    return augmentation.as_float_volumes(volumes)


def load_served(
    workdir: str,
    checkpoint: str = 'best',
    *,
    moving_average: bool = True,
    tta_flip_axes: tuple[int, ...] | None = None,
    tta_shift: int | None = None,
) -> Served:
  """The model and parameters of a checkpoint in `workdir`, with the config's test-time views
  unless given: what load_predictor and load_explainer serve (their arguments).
  """
  config = load_config(workdir)
  if config.trainer_name == masked_pretraining.TRAINER_NAME:
    raise ValueError(
        f'{workdir} holds a run of trainer_name={config.trainer_name!r} (masked'
        ' pretraining), which has no classifier to serve: fine-tune it first'
        " (config.init_from.checkpoint_path, checkpoint_format='vivit') and load that run."
    )
  params, meta = checkpoints.restore_params(
      workdir, checkpoint, moving_average=moving_average
  )
  meta['input_shape'] = tuple(meta['input_shape'])
  flax_model = model.get_model_cls(config.model_name)(config, meta).flax_model
  flip_axes = tuple(
      config.tta_flip_axes if tta_flip_axes is None else tta_flip_axes
  )
  shift = (config.tta_shift or 0) if tta_shift is None else tta_shift
  train_utils.check_evaluation_options(flip_axes, shift)
  return Served(flax_model, params, flip_axes, shift, meta['input_shape'][1:])


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
  served = load_served(
      workdir,
      checkpoint,
      moving_average=moving_average,
      tta_flip_axes=tta_flip_axes,
      tta_shift=tta_shift,
  )

  @jax.jit
  def probabilities(x):
    return train_utils.predict(
        served.flax_model.apply,
        served.params,
        x,
        served.flip_axes,
        served.shift,
    )[1]

  def predict(volumes: np.ndarray) -> np.ndarray:
    return np.asarray(probabilities(served.model_input(volumes)))

  return predict


def load_explainer(
    workdir: str,
    checkpoint: str = 'best',
    *,
    moving_average: bool = True,
    tta_flip_axes: tuple[int, ...] | None = None,
    tta_shift: int | None = None,
    batch_size: int = 32,
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """A function from volumes to class probabilities and attention maps, using the checkpoint
  and parameters `load_predictor` serves with the same arguments.

  The function takes volumes as `load_predictor`'s does and returns float32 probabilities
  `[N, num_classes]` (those of `load_predictor`, up to float rounding: attention runs on XLA's
  einsum path here) and float32 attention maps `[N, T, H, W]` on the volumes' voxels: attention
  rollout through every encoder layer, read through the classifier's pooling, as attention
  mass per voxel summing to one over each volume (`attention_maps`; with test-time views, the
  mean over the views of each view's map pulled back to the volume). It runs jitted on batches
  of `batch_size` volumes (the last one padded), so it compiles once.
  """
  served = load_served(
      workdir,
      checkpoint,
      moving_average=moving_average,
      tta_flip_axes=tta_flip_axes,
      tta_shift=tta_shift,
  )
  explain = jax.jit(
      functools.partial(
          attention_maps.explain,
          served.flax_model,
          flip_axes=served.flip_axes,
          shift=served.shift,
      )
  )

  def probabilities_and_maps(
      volumes: np.ndarray,
  ) -> tuple[np.ndarray, np.ndarray]:
    x = served.model_input(volumes)
    return in_batches(lambda b: explain(served.params, b), x, batch_size)

  return probabilities_and_maps


def in_batches(
    fn: Callable[[np.ndarray], Any],
    inputs: np.ndarray,
    batch_size: int,
    progress: str | None = None,
) -> Any:
  """fn applied to `inputs` [N, ...] in batches of `batch_size` (the last one padded with
  zeros, so a jitted fn compiles once), its outputs (arrays [batch, ...] or tuples of them)
  concatenated into numpy arrays [N, ...]; with a tqdm bar labelled `progress` if given.
  """
  outputs = []
  starts = range(0, len(inputs), batch_size)
  if progress:
    starts = tqdm.tqdm(starts, desc=progress, unit='batch')
  for start in starts:
    batch = inputs[start : start + batch_size]
    padding = [(0, batch_size - len(batch))] + [(0, 0)] * (batch.ndim - 1)
    out = fn(np.pad(batch, padding))
    outputs.append(
        jax.tree_util.tree_map(lambda a: np.asarray(a)[: len(batch)], out)
    )
  return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *outputs)
