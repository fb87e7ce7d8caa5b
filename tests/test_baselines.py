"""benchmarks/baselines.py: the two trivial baselines on an easy synthetic problem, through the
project's loader, with and without cross-validation folds."""

import os

import ml_collections
import numpy as np
import pytest

from benchmarks import baselines
from vivit_flax.datasets import medmnist3d

NAMES = ('pca_logistic_regression', 'random_forest')


def _easy_npz(path):
  """Two classes of noisy 8^3 uint8 volumes: class 1 has a bright cube in one corner."""
  rng = np.random.default_rng(0)
  arrays = {}
  for split, n in (('train', 80), ('val', 30), ('test', 40)):
    labels = np.arange(n) % 2
    images = rng.integers(0, 100, (n, 8, 8, 8), dtype=np.uint8)
    images[labels == 1, :3, :3, :3] += 120
    arrays[f'{split}_images'], arrays[f'{split}_labels'] = images, labels
  np.savez(path, **arrays)


def _config(path, **dataset_configs):
  return ml_collections.ConfigDict(
      dict(
          dataset_name='npz_video',
          dataset_configs=dict(path=path, **dataset_configs),
          batch_size=4,
          rng_seed=0,
      )
  )


@pytest.fixture
def easy(tmp_path):
  path = str(tmp_path / 'easy.npz')
  _easy_npz(path)
  return path


def test_baselines_learn_an_easy_problem(easy):
  results = baselines.evaluate(_config(easy))
  assert tuple(results) == NAMES
  for scores in results.values():
    assert scores['test.auc'] > 0.9 and scores['validation.auc'] > 0.9
    assert scores['test.accuracy'] > 0.8
    assert 0 < scores['seconds'] < 60
  text = baselines.format_results(results)
  assert text.count('\n') == 1 and 'random_forest: test.accuracy' in text


def test_with_folds_only_the_validation_fold_is_scored(easy):
  results = baselines.evaluate(
      _config(easy, num_folds=5, fold=1), splits=('validation',)
  )
  for scores in results.values():
    assert sorted(scores) == [
        'seconds',
        'validation.accuracy',
        'validation.auc',
        'validation.balanced_accuracy',
    ]
    assert scores['validation.auc'] > 0.9


@pytest.mark.skipif(
    not os.path.exists(
        os.path.join(medmnist3d.SHARED_DATA_DIR, 'adrenalmnist3d.npz')
    ),
    reason='needs the real adrenalmnist3d.npz in the shared data folder',
)
def test_real_adrenalmnist3d_baselines_beat_chance():
  config = ml_collections.ConfigDict(
      dict(
          dataset_name='medmnist3d',
          dataset_configs=dict(name='adrenalmnist3d', size=28),
          batch_size=4,
          rng_seed=0,
      )
  )
  for scores in baselines.evaluate(config).values():
    assert scores['test.auc'] > 0.7
