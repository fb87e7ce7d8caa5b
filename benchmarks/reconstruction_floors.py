r"""Trivial floors beside a masked-pretraining run's reconstruction loss: what predicting zeros, or
each token's mean over the training volumes (a position prior that ignores the visible tokens),
scores on the validation split with the run's tokens and targets.

  python -m benchmarks.reconstruction_floors --workdir=/tmp/adrenal_mae

Masks are uniform over tokens, so a predictor's expected loss over the masked tokens is its mean
squared error over all tokens. A pretraining whose validation loss (results.json) is not below
the position prior has learned nothing a fine-tune could use from the visible tokens.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from vivit_flax import datasets, inference, masked_pretraining

FLAGS = flags.FLAGS


def token_targets(config, images: np.ndarray) -> np.ndarray:
  """The reconstruction targets of every token of `images` [N, T, H, W, C] (uint8 or [0, 1]
  floats), [N, tokens, voxels], as the run's model computes them."""
  mae = masked_pretraining.ViViTMaskedAutoencoderModel(
      config, {'num_classes': 1, 'input_shape': (-1,) + images.shape[1:]}
  )
  x = images.astype(np.float32)
  if images.dtype == np.uint8:
    x /= 255.0
  targets = masked_pretraining.tubelet_voxels(
      jnp.asarray(x), mae.token_grid(), mae.flax_model.footprint()
  )
  if config.masked_feature_loss.normalise_targets:
    targets = masked_pretraining.normalise(targets)
  return np.asarray(targets)


def floors(config) -> dict[str, float]:
  """Validation loss of predicting zeros and of the training mean of each token's targets."""
  splits, _ = datasets.load_splits(config)
  train = token_targets(config, splits['train'][0])
  validation = token_targets(config, splits['validation'][0])
  prior = train.mean(axis=0)
  return {
      'zeros': float(np.mean(validation**2)),
      'position_prior': float(np.mean((validation - prior) ** 2)),
  }


def main(argv):
  del argv
  config = inference.load_config(FLAGS.workdir)
  if config.trainer_name != masked_pretraining.TRAINER_NAME:
    raise app.UsageError(f'{FLAGS.workdir} is not a masked-pretraining run.')
  scores = floors(config)
  results = os.path.join(FLAGS.workdir, 'results.json')
  if os.path.exists(results):
    with open(results) as f:
      scores['run'] = json.load(f)['validation']['loss']
  print(
      'validation reconstruction loss: '
      + ', '.join(f'{name} {value:.5f}' for name, value in scores.items())
  )


if __name__ == '__main__':
  # Defined here, not on import, so the tests can import `floors` beside other benchmarks that
  # define a --workdir of their own.
  flags.DEFINE_string('workdir', None, 'Workdir of a masked-pretraining run.')
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
