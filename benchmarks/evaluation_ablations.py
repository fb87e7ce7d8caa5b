r"""Levers of evaluation only, read from trained workdirs without retraining: the validation AUC
of each run's final checkpoint with and without the parameters' moving average (EMA does not
change the training trajectory, so its ablation needs no new run) and with and without flip
test-time augmentation.

  python -m benchmarks.evaluation_ablations /tmp/acc/recipe28/seed_0 /tmp/acc/recipe28/seed_1

Prints, per variant, the mean and standard deviation over the workdirs.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from vivit_flax import checkpoints, datasets, evaluation, inference, model, train_utils

VARIANTS = {  # name: (moving average, TTA flip axes)
    'as trained (EMA if kept, no TTA)': (True, ()),
    'EMA off': (False, ()),
    'TTA flips (0, 1, 2)': (True, (0, 1, 2)),
}


def validation_auc(
    workdir: str, moving_average: bool, flip_axes: tuple[int, ...]
) -> float:
  """Validation AUC of the newest checkpoint of `workdir` under one evaluation variant."""
  config = inference.load_config(workdir)
  params, meta = checkpoints.restore_params(
      workdir, 'latest', moving_average=moving_average
  )
  meta['input_shape'] = tuple(meta['input_shape'])
  flax_model = model.get_model_cls(config.model_name)(config, meta).flax_model
  images, labels = datasets.get_dataset(config, local_device_count=1).arrays(
      'validation'
  )
  probabilities = jax.jit(
      lambda x: train_utils.predict(flax_model.apply, params, x, flip_axes)[1]
  )
  x = images.astype(np.float32) / 255 if images.dtype == np.uint8 else images
  return evaluation.medmnist_auc(
      labels, np.asarray(probabilities(x)), meta['task']
  )


def main(workdirs: list[str]) -> None:
  for name, (moving_average, flip_axes) in VARIANTS.items():
    aucs = np.array(
        [validation_auc(w, moving_average, flip_axes) for w in workdirs]
    )
    print(
        f'{name:34s} validation AUC {aucs.mean():.3f} +- {aucs.std(ddof=1):.3f} '
        f'({", ".join(f"{a:.3f}" for a in aucs)})'
    )


if __name__ == '__main__':
  main(sys.argv[1:])
