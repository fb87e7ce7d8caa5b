r"""Levers of evaluation only, read from trained workdirs without retraining: the validation AUC
of each run's final checkpoint with and without the parameters' moving average (EMA does not
change the training trajectory, so its ablation needs no new run) and with and without
test-time augmentation (flips, or shifts of one voxel).

  python -m benchmarks.evaluation_ablations /tmp/acc/recipe28/seed_0 /tmp/acc/recipe28/seed_1

Prints, per variant, the mean and standard deviation over the workdirs.
"""

from __future__ import annotations

import sys

import numpy as np

from vivit_flax import datasets, evaluation, inference

VARIANTS = {  # name: (moving average, TTA flip axes, TTA shift)
    'as trained (EMA if kept, no TTA)': (True, (), 0),
    'EMA off': (False, (), 0),
    'TTA flips (0, 1, 2)': (True, (0, 1, 2), 0),
    'TTA shifts of 1 voxel': (True, (), 1),
}


def validation_auc(
    workdir: str, moving_average: bool, flip_axes: tuple[int, ...], shift: int
) -> float:
  """Validation AUC of the newest checkpoint of `workdir` under one evaluation variant."""
  dataset = datasets.get_dataset(
      inference.load_config(workdir), local_device_count=1
  )
  images, labels = dataset.arrays('validation')
  predict = inference.load_predictor(
      workdir,
      'latest',
      moving_average=moving_average,
      tta_flip_axes=flip_axes,
      tta_shift=shift,
  )
  return evaluation.medmnist_auc(
      labels, predict(images), dataset.meta_data['task']
  )


def main(workdirs: list[str]) -> None:
  for name, (moving_average, flip_axes, shift) in VARIANTS.items():
    aucs = np.array(
        [validation_auc(w, moving_average, flip_axes, shift) for w in workdirs]
    )
    print(
        f'{name:34s} validation AUC {aucs.mean():.3f} +- {aucs.std(ddof=1):.3f} '
        f'({", ".join(f"{a:.3f}" for a in aucs)})'
    )


if __name__ == '__main__':
  main(sys.argv[1:])
