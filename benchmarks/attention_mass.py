r"""How much of a trained model's attention falls on the object, for correct and wrong predictions.

  python -m benchmarks.attention_mass --workdir=/tmp/attn_adrenal [--split=test] [--threshold=0]

Explains every volume of the split with the workdir's served checkpoint
(inference.load_explainer: attention rollout read through the pooling, as attention mass per
voxel summing to one) and compares, per volume, with the object: the voxels above --threshold
(for MedMNIST's shape-mask sets, such as AdrenalMNIST3D, whose volumes are binary masks:
the mask; on intensity volumes the figure means little). Columns, means over the volumes of
each group (all, correct, wrong predictions):

  mask share       the share of the volume's voxels that the mask occupies: what a uniform map
                   would put inside it
  mass in mask     the share of the attention mass on the mask's voxels
  split-mean map   the mass that the mean of the split's maps (one fixed map for every volume)
                   puts on each volume's mask: what attention that ignores the input would get
  ceiling          the most any map can put on the mask: the mask's share of the voxels of
                   the token it fills most (a token's mass is spread evenly over its voxels)
  mask tokens      the share of tokens whose voxels include mask voxels, and
  mass on them     the attention mass on those tokens: the same comparison at the resolution
                   of the tokens

and the share of volumes whose most attended token is the split's most frequent one. Prints a
markdown table and writes <workdir>/attention_mass_<split>.json.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from vivit_flax import attention_maps, datasets, inference

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Training workdir.')
flags.DEFINE_enum(
    'split', 'test', ['train', 'validation', 'test'], 'Split to measure.'
)
flags.DEFINE_integer(
    'threshold', 0, 'The object: uint8 voxel values above this one.'
)
flags.DEFINE_integer('batch_size', 32, 'Volumes explained at once.')

_COLUMNS = (
    ('mask_share', 'mask share'),
    ('mass_in_mask', 'mass in mask'),
    ('split_mean_map_in_mask', 'split-mean map in mask'),
    ('ceiling', 'ceiling'),
    ('mask_token_share', 'mask tokens'),
    ('mass_on_mask_tokens', 'mass on them'),
)


def per_volume(
    maps: np.ndarray, masks: np.ndarray, owners, grid
) -> dict[str, np.ndarray]:
  """Per-volume figures of maps [N, T, H, W] (mass per voxel) against masks [N, T, H, W]."""
  tokens = attention_maps.per_token(maps, owners, grid)
  mask_voxels = attention_maps.per_token(masks.astype(np.float32), owners, grid)
  token_voxels = attention_maps.per_token(np.ones_like(maps[:1]), owners, grid)
  on_mask = mask_voxels > 0
  mean_map = maps.mean(axis=0)
  flat_tokens = tokens.reshape(len(tokens), -1)
  top = flat_tokens.argmax(axis=-1)
  return {
      'mask_share': masks.mean(axis=(1, 2, 3)),
      'mass_in_mask': (maps * masks).sum(axis=(1, 2, 3)),
      'split_mean_map_in_mask': (mean_map * masks).sum(axis=(1, 2, 3)),
      'ceiling': (mask_voxels / token_voxels).max(axis=(1, 2, 3)),
      'mask_token_share': on_mask.mean(axis=(1, 2, 3)),
      'mass_on_mask_tokens': (tokens * on_mask).sum(axis=(1, 2, 3)),
      'top_is_modal': top == np.bincount(top).argmax(),
  }


def summary(
    figures: dict[str, np.ndarray], correct: np.ndarray
) -> dict[str, dict[str, float]]:
  """Means of the per-volume figures over all, correct and wrong predictions."""
  groups = {'all': np.ones_like(correct), 'correct': correct, 'wrong': ~correct}
  return {
      name: {'n': int(members.sum())}
      | {k: float(v[members].mean()) for k, v in figures.items()}
      for name, members in groups.items()
      if members.any()
  }


def markdown(table: dict[str, dict[str, float]]) -> str:
  """The summary as a markdown table, shares in percent."""
  head = ['predictions', 'n'] + [title for _, title in _COLUMNS]
  head.append('top token = modal one')
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for name, row in table.items():
    cells = [name, str(row['n'])]
    cells += [f'{100 * row[key]:.1f} %' for key, _ in _COLUMNS]
    cells.append(f'{100 * row["top_is_modal"]:.0f} %')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def measure(
    workdir: str, split: str, threshold: int, batch_size: int
) -> dict[str, dict[str, float]]:
  """Explains the split and summarises its figures (see the module docstring)."""
  config = inference.load_config(workdir)
  dataset = datasets.get_dataset(
      config, process_index=0, process_count=1, local_device_count=1
  )
  images, labels = dataset.arrays(split)
  served = inference.load_served(workdir)
  shape = served.input_shape[:3]
  owners = attention_maps.voxel_owners(served.flax_model, shape)
  grid = served.flax_model.token_grid(shape)
  probabilities, maps = inference.load_explainer(
      workdir, batch_size=batch_size
  )(images)
  masks = images.reshape((len(images),) + shape + (-1,)).max(-1) > threshold
  figures = per_volume(maps, masks, owners, grid)
  return summary(figures, probabilities.argmax(-1) == labels)


def main(argv):
  del argv
  table = measure(FLAGS.workdir, FLAGS.split, FLAGS.threshold, FLAGS.batch_size)
  path = os.path.join(FLAGS.workdir, f'attention_mass_{FLAGS.split}.json')
  with open(path, 'w') as f:
    json.dump(table, f, indent=2)
  print(markdown(table))
  print(f'wrote {path}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
