"""k-fold cross-validation: train and validation pooled and dealt into stratified folds.

With config.dataset_configs.num_folds = k and fold = f, the train and validation splits of the
file are pooled, each class's examples are shuffled by a fixed permutation and dealt round the k
folds in turn, fold f becomes the validation split and the other folds the training split; the test
split is left as it is. The folds depend on the pooled labels and k alone (never on
config.rng_seed, the process count or the machine), so every run and every baseline of one k sees
the same folds. Per class, fold sizes differ by at most one example, and so do the folds' sizes.
"""

from absl import logging
import numpy as np

# Seed of the per-class shuffles; numpy's legacy RandomState stream is the same on every machine
# and numpy version.
_SHUFFLE_SEED = 0


def check_keys(num_folds, fold) -> None:
  """Raises ValueError, naming the key and the fix, unless (num_folds, fold) is (None, None) or a
  number of folds of at least 2 with a fold in 0..num_folds-1."""
  if num_folds is None:
    if fold is not None:
      raise ValueError(
          f'config.dataset_configs.fold={fold} is set but '
          'config.dataset_configs.num_folds is not; set num_folds (at least 2) for k-fold '
          "cross-validation, or unset fold to use the dataset's own validation split."
      )
    return
  if num_folds < 2:
    raise ValueError(
        f'config.dataset_configs.num_folds={num_folds} must be at least 2, or None for the '
        "dataset's own validation split."
    )
  if fold is None or not 0 <= fold < num_folds:
    raise ValueError(
        f'config.dataset_configs.fold={fold} must be one of 0..{num_folds - 1} with '
        f'config.dataset_configs.num_folds={num_folds}: the fold held out for validation.'
    )


def assign(labels: np.ndarray, num_folds: int) -> np.ndarray:
  """The fold (0..num_folds-1) of each example of `labels`: each class shuffled by a fixed
  permutation, then dealt round the folds, starting where the previous class stopped.
  """
  folds = np.empty(len(labels), np.int64)
  dealt = 0
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    if len(members) < num_folds:
      raise ValueError(
          f'Class {label} has {len(members)} examples in train + validation, fewer than '
          f'config.dataset_configs.num_folds={num_folds}, so some folds would lack it; lower '
          'num_folds.'
      )
    order = np.random.RandomState(_SHUFFLE_SEED).permutation(len(members))
    folds[members[order]] = (dealt + np.arange(len(members))) % num_folds
    dealt += len(members)
  return folds


def split(splits: dict, num_folds: int, fold: int) -> dict:
  """`splits` ('train', 'validation', 'test' -> (images, labels)) with train and validation
  replaced by the folds other than `fold` and by fold `fold` of their pooled examples (the keys
  already checked by `check_keys`).
  """
  images, labels = (
      np.concatenate([splits['train'][i], splits['validation'][i]])
      for i in (0, 1)
  )
  held_out = assign(labels, num_folds) == fold
  logging.info(
      'Cross-validation fold %d of %d: %d training and %d validation examples.',
      fold,
      num_folds,
      np.sum(~held_out),
      np.sum(held_out),
  )
  return {
      'train': (images[~held_out], labels[~held_out]),
      'validation': (images[held_out], labels[held_out]),
      'test': splits['test'],
  }
