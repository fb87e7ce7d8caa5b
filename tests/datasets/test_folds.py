"""k-fold cross-validation (config.dataset_configs.num_folds, fold): disjoint, complete, stratified
and fixed folds of train + validation, test untouched, and clear errors for bad keys.
"""

import ml_collections
import numpy as np
import pytest

from vivit_flax import datasets
from vivit_flax.datasets import folds

NUM_FOLDS = 5
DEVICES = dict(process_index=0, process_count=1, local_device_count=1)


def _config(path, num_folds=NUM_FOLDS, fold=0, rng_seed=0):
  return ml_collections.ConfigDict(
      dict(
          dataset_name='npz_video',
          dataset_configs=dict(path=path, num_folds=num_folds, fold=fold),
          batch_size=4,
          rng_seed=rng_seed,
      )
  )


@pytest.fixture
def volumes(tmp_path, make_npz):
  """A 3-class npz_video file of distinct random volumes; returns its path and arrays."""
  path = str(tmp_path / 'volumes.npz')
  return path, make_npz(
      path, sizes=(47, 13, 11), shape=(4, 6, 5), num_classes=3
  )


def _keys(images):
  """Each volume's bytes: an identity for the distinct random volumes of `volumes`."""
  return [image.tobytes() for image in images]


def test_folds_are_disjoint_and_cover_train_and_validation_exactly(volumes):
  path, arrays = volumes
  pooled = _keys(np.concatenate([arrays['train_images'], arrays['val_images']]))
  assert len(set(pooled)) == len(pooled)  # Distinct, so bytes identify volumes.
  held_out = []
  for fold in range(NUM_FOLDS):
    splits, _ = datasets.load_splits(_config(path, fold=fold))
    train, validation = _keys(splits['train'][0]), _keys(
        splits['validation'][0]
    )
    assert not set(train) & set(validation)
    assert sorted(train + validation) == sorted(pooled)
    np.testing.assert_array_equal(
        splits['test'][0][..., 0], arrays['test_images']
    )
    held_out += validation
  assert sorted(held_out) == sorted(
      pooled
  )  # Each volume validates exactly once.


def test_folds_are_stratified_and_balanced(volumes):
  path, arrays = volumes
  counts = np.array(
      [
          np.bincount(
              datasets.load_splits(_config(path, fold=fold))[0]['validation'][
                  1
              ],
              minlength=3,
          )
          for fold in range(NUM_FOLDS)
      ]
  )
  pooled = np.concatenate([arrays['train_labels'], arrays['val_labels']])[:, 0]
  np.testing.assert_array_equal(counts.sum(0), np.bincount(pooled, minlength=3))
  assert (
      np.ptp(counts, axis=0).max() <= 1
  )  # Per class, fold sizes differ by <= 1.
  assert np.ptp(counts.sum(1)) <= 1  # And so do the folds' sizes.


def test_folds_are_stable_across_calls_and_seeds(volumes):
  path, _ = volumes
  first, _ = datasets.load_splits(_config(path, fold=2, rng_seed=0))
  again, _ = datasets.load_splits(_config(path, fold=2, rng_seed=7))
  for split in ('train', 'validation'):
    for a, b in zip(first[split], again[split]):
      np.testing.assert_array_equal(a, b)


def test_assignment_is_pinned():
  """The fixed permutation (numpy's frozen legacy stream): the same folds on any machine."""
  labels = np.array([1, 0, 1, 0, 1, 0, 1, 1, 0, 0])
  assert folds.assign(labels, 2).tolist() == [0, 1, 1, 0, 1, 0, 0, 1, 1, 0]


def test_get_dataset_trains_and_validates_on_the_folds(volumes):
  path, _ = volumes
  meta = datasets.get_dataset(_config(path, fold=4), **DEVICES).meta_data
  assert meta['num_train_examples'] + meta['num_eval_examples'] == 47 + 13
  assert meta['num_eval_examples'] == 12 and meta['num_test_examples'] == 11


@pytest.mark.parametrize(
    'num_folds, fold, message',
    [
        (1, 0, 'config.dataset_configs.num_folds=1 must be at least 2'),
        (5, 5, 'config.dataset_configs.fold=5 must be one of 0..4'),
        (5, -1, 'config.dataset_configs.fold=-1 must be one of 0..4'),
        (5, None, 'config.dataset_configs.fold=None must be one of 0..4'),
        (None, 2, 'config.dataset_configs.fold=2 is set but'),
    ],
)
def test_bad_fold_keys_name_the_key_and_the_fix(
    volumes, num_folds, fold, message
):
  config = _config(volumes[0], num_folds=num_folds, fold=fold)
  with pytest.raises(ValueError, match=message):
    datasets.check_config(config, 1, 1)
  with pytest.raises(ValueError, match=message):
    datasets.load_splits(config)


def test_more_folds_than_a_class_has_examples_is_refused(volumes):
  with pytest.raises(ValueError, match='lower num_folds'):
    datasets.load_splits(_config(volumes[0], num_folds=40))
