"""Datasets: `get_dataset(config)` builds a `Dataset` for config.dataset_name.

'medmnist3d'  one of the six MedMNIST 3D sets (medmnist3d.py),
'synthetic3d' a generated 11-shape volume set in the MedMNIST layout (synthetic.py, read by npz_video.py),
'npz_video'   a user `.npz` in the MedMNIST layout (npz_video.py).

The training order is seeded by config.rng_seed (see input_pipeline.py). The optional
config.dataset_configs.num_workers sets the host threads building batches (default: half the CPU cores, at
most 8); the batches do not depend on it.
"""

from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vivit_flax import default_config
from vivit_flax.config_checks import check_choice
from vivit_flax.datasets import input_pipeline
from vivit_flax.datasets import medmnist3d
from vivit_flax.datasets import npz_video

# The input dtypes the pipeline serves (config.data_dtype_str).
DATA_DTYPES = ('float32',)
# config.dataset_name -> its loader(config.dataset_configs) -> (splits, metadata).
LOADERS = {
    'medmnist3d': medmnist3d.load,
    'synthetic3d': npz_video.load_synthetic3d,
    'npz_video': npz_video.load,
}


class Dataset(NamedTuple):
  """A loaded dataset: metadata, training/evaluation batch iterators of this process, and the raw arrays."""

  meta_data: dict
  steps_per_epoch: int
  train_iter: Callable[[int], Iterator[dict]]
  eval_iter: Callable[[str], Iterator[dict]]
  arrays: Callable[[str], tuple[np.ndarray, np.ndarray]]


def get_dataset(
    config, *, process_index=None, process_count=None, local_device_count=None
):
  """Loads config.dataset_name and returns a `Dataset` whose iterators serve this process's batches."""
  config = default_config.with_defaults(config)
  check_choice('config.dataset_name', config.dataset_name, LOADERS)
  check_choice('config.data_dtype_str', config.data_dtype_str, DATA_DTYPES)
  process_index = (
      jax.process_index() if process_index is None else process_index
  )
  process_count = (
      jax.process_count() if process_count is None else process_count
  )
  local_device_count = (
      jax.local_device_count()
      if local_device_count is None
      else local_device_count
  )
  batch_size = config.batch_size
  eval_batch_size = config.eval_batch_size or batch_size
  for b in (batch_size, eval_batch_size):
    input_pipeline.per_device_batch_size(b, process_count, local_device_count)

  splits, meta = LOADERS[config.dataset_name](config.dataset_configs)
  for split, (_, labels) in splits.items():
    if labels.size and labels.max() >= meta['num_classes']:
      raise ValueError(
          f'{meta["data_file"]}: {split} label {labels.max()} >= num_classes {meta["num_classes"]}.'
      )
  steps_per_epoch = len(splits['train'][1]) // batch_size
  if steps_per_epoch == 0:
    raise ValueError(
        f'{meta["data_file"]}: {len(splits["train"][1])} training examples is fewer than one '
        f'global batch of {batch_size}.'
    )
  meta.update(
      input_shape=(-1,) + splits['train'][0].shape[1:],
      input_dtype=jnp.float32,
      target_is_onehot=True,
      num_train_examples=len(splits['train'][1]),
      num_eval_examples=len(splits['validation'][1]),
      num_test_examples=len(splits['test'][1]),
      train_class_counts=tuple(
          int(c)
          for c in np.bincount(
              splits['train'][1], minlength=meta['num_classes']
          )
      ),
  )

  common = dict(
      num_classes=meta['num_classes'],
      process_index=process_index,
      process_count=process_count,
      local_device_count=local_device_count,
      num_workers=config.dataset_configs.num_workers,
  )

  def train_iter(start_step):
    return input_pipeline.train_iterator(
        *splits['train'],
        batch_size=batch_size,
        seed=config.rng_seed,
        start_step=start_step,
        augmentation=config.dataset_configs.augmentation,
        **common,
    )

  def eval_iter(split):
    return input_pipeline.eval_iterator(
        *arrays(split), batch_size=eval_batch_size, **common
    )

  def arrays(split):
    if split not in splits:
      raise ValueError(
          f'Unknown split {split!r}; choose one of {sorted(splits)}.'
      )
    return splits[split]

  return Dataset(meta, steps_per_epoch, train_iter, eval_iter, arrays)
