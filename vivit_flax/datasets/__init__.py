"""Datasets: `get_dataset(config)` builds a `Dataset` for config.dataset_name.

'medmnist3d'  one of the six MedMNIST 3D sets (medmnist3d.py),
'synthetic3d' a generated 11-shape volume set in the MedMNIST layout (synthetic.py, read by npz_video.py),
'npz_video'   a user `.npz` in the MedMNIST layout (npz_video.py).

With config.dataset_configs.num_folds set, train and validation are replaced by cross-validation
folds (folds.py). The training order is seeded by config.rng_seed (see input_pipeline.py). The
optional config.dataset_configs.num_workers sets the host threads building batches (default: half
the CPU cores, at most 8); the batches do not depend on it.
"""

import os
from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vivit_flax import default_config
from vivit_flax.config_checks import check_choice, check_positive
from vivit_flax.datasets import folds
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


def check_config(config, process_count: int, local_device_count: int) -> None:
  """Raises ValueError, saying what to change, for dataset settings of `config` that cannot
  work: an unknown dataset or dtype, cross-validation keys out of range, a batch size that does
  not split over the devices of the run, or a data file that is missing and will be neither
  downloaded nor generated. Reads no data."""
  config = default_config.with_defaults(config)
  check_choice('config.dataset_name', config.dataset_name, LOADERS)
  check_choice('config.data_dtype_str', config.data_dtype_str, DATA_DTYPES)
  dataset_configs = config.dataset_configs
  folds.check_keys(dataset_configs.num_folds, dataset_configs.fold)
  if (
      dataset_configs.unlabeled_files
      and config.trainer_name != 'vivit_mae_pretrainer'
  ):
    raise ValueError(
        'config.dataset_configs.unlabeled_files adds volumes without labels, which only masked'
        " pretraining (trainer_name='vivit_mae_pretrainer') can train on: list them in"
        ' config.init_from.masked_pretraining.dataset_configs.unlabeled_files instead.'
    )
  for key in ('num_workers', 'prefetch_to_device'):
    check_positive(f'config.dataset_configs.{key}', dataset_configs[key])
  for key in ('batch_size', 'eval_batch_size'):
    if config[key] is not None:
      input_pipeline.per_device_batch_size(
          config[key], process_count, local_device_count, key
      )
  if config.dataset_name == 'medmnist3d':
    file_name, _, _ = medmnist3d.file_info(
        dataset_configs.name, dataset_configs.size
    )
    path = medmnist3d.data_path(dataset_configs, file_name)
    if not os.path.exists(path) and not dataset_configs.download:
      medmnist3d.load(
          dataset_configs
      )  # Raises its FileNotFoundError: the path and the fix.
  elif config.dataset_name == 'npz_video':
    if not os.path.exists(os.path.expanduser(dataset_configs.path or '')):
      npz_video.load(dataset_configs)  # Raises: no path set, or no file there.


def input_shape(config) -> tuple[int, ...] | None:
  """(-1, T, H, W, C) of the dataset's examples when the config alone fixes it, else None."""
  config = default_config.with_defaults(config)
  if config.dataset_name == 'medmnist3d':
    size = config.dataset_configs.size
    return (-1, size, size, size, 1)
  if config.dataset_name == 'synthetic3d':
    # Imported here so that `python -m vivit_flax.datasets.synthetic` runs it fresh.
    from vivit_flax.datasets import synthetic  # pylint: disable=g-import-not-at-top

    return (-1, synthetic.SIZE, synthetic.SIZE, synthetic.SIZE, 1)
  return None


def load_splits(config) -> tuple[dict, dict]:
  """(splits, meta) of config.dataset_name as its loader reads them: 'train', 'validation' and
  'test' -> (images, labels), labels checked against meta's num_classes; with
  config.dataset_configs.num_folds, train and validation are the cross-validation folds.
  """
  config = default_config.with_defaults(config)
  num_folds, fold = (
      config.dataset_configs.num_folds,
      config.dataset_configs.fold,
  )
  folds.check_keys(num_folds, fold)
  splits, meta = LOADERS[config.dataset_name](config.dataset_configs)
  for split, (_, labels) in splits.items():
    if labels.size and labels.max() >= meta['num_classes']:
      raise ValueError(
          f'{meta["data_file"]}: {split} label {labels.max()} >= num_classes {meta["num_classes"]}.'
      )
  if num_folds is not None:
    splits = folds.split(splits, num_folds, fold)
  if config.dataset_configs.unlabeled_files:
    images, labels = splits['train']
    extra = [
        npz_video.read_unlabeled(path, images.shape[1:], images.dtype)
        for path in config.dataset_configs.unlabeled_files
    ]
    # Label 0 fills the label slot; masked pretraining, the only reader, never reads it.
    splits['train'] = (
        np.concatenate([images] + extra),
        np.concatenate(
            [labels] + [np.zeros(len(e), labels.dtype) for e in extra]
        ),
    )
    meta['unlabeled_files'] = list(config.dataset_configs.unlabeled_files)
  return splits, meta


def get_dataset(
    config, *, process_index=None, process_count=None, local_device_count=None
):
  """Loads config.dataset_name and returns a `Dataset` whose iterators serve this process's batches."""
  config = default_config.with_defaults(config)
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
  check_config(config, process_count, local_device_count)
  batch_size = config.batch_size
  eval_batch_size = config.eval_batch_size or batch_size

  splits, meta = load_splits(config)
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
