r"""Trivial baselines beside every figure: what a linear model and a forest get from raw voxels.

  python -m benchmarks.baselines --config=configs/medmnist3d/vivit_recipe.py:adrenalmnist3d
  python -m benchmarks.baselines --config=configs/medmnist3d/vivit_recipe.py:adrenalmnist3d,64

Two scikit-learn models, untuned, fixed random states, fitted on the config's training split as
the project's own loader reads it (`datasets.load_splits`: the same file, MD5 check, splits and,
with config.dataset_configs.num_folds, the same cross-validation folds):

  pca_logistic_regression  voxels scaled to [0, 1] as the ViViT sees them, the first 50 principal
                           components, logistic regression;
  random_forest            a random forest (scikit-learn's defaults) on the raw flattened voxels.

Each is scored as a trained ViViT is (`vivit_flax.evaluation`): accuracy (arg-max), balanced
accuracy and MedMNIST's AUC, on the test and validation splits, or on the validation fold alone
when the config sets num_folds (a choice made on validation must not see the test split).
benchmarks/accuracy.py prints these rows beside a recipe's summary.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from sklearn import base, decomposition, ensemble, linear_model, pipeline
from sklearn import preprocessing

from vivit_flax import command_line, datasets, default_config, evaluation
from vivit_flax.datasets import augmentation

PCA_COMPONENTS = 50
RANDOM_STATE = 0
# Iterations of the logistic regression's solver: enough to converge on MedMNIST's sets.
MAX_ITER = 10_000


def models(train_shape: tuple[int, int]) -> dict[str, base.ClassifierMixin]:
  """The baselines by name, unfitted, for a training matrix of `train_shape` [examples, voxels]."""
  return {
      'pca_logistic_regression': pipeline.make_pipeline(
          preprocessing.FunctionTransformer(augmentation.as_float_volumes),
          decomposition.PCA(
              min(PCA_COMPONENTS, *train_shape), random_state=RANDOM_STATE
          ),
          linear_model.LogisticRegression(
              max_iter=MAX_ITER, random_state=RANDOM_STATE
          ),
      ),
      'random_forest': ensemble.RandomForestClassifier(
          random_state=RANDOM_STATE, n_jobs=-1
      ),
  }


def scores(
    labels: np.ndarray, probabilities: np.ndarray, task: str
) -> dict[str, float]:
  """Accuracy, balanced accuracy and MedMNIST's AUC of `probabilities` [N, classes]."""
  matrix = evaluation.confusion_matrix(
      labels, probabilities.argmax(-1), probabilities.shape[-1]
  )
  return {
      'accuracy': float(np.trace(matrix) / matrix.sum()),
      'balanced_accuracy': evaluation.balanced_accuracy(matrix),
      'auc': evaluation.medmnist_auc(labels, probabilities, task),
  }


def evaluate(
    config, splits: Sequence[str] = ('test', 'validation')
) -> dict[str, dict[str, float]]:
  """Fits each baseline on the training split of `config`'s dataset; returns, per baseline,
  '<split>.<metric>' for each of `splits` and each metric of `scores`, and 'seconds' (fit and
  predictions).
  """
  data, meta = datasets.load_splits(config)
  flat = {
      split: (images.reshape(len(images), -1), labels)
      for split, (images, labels) in data.items()
  }
  results = {}
  for name, model in models(flat['train'][0].shape).items():
    start = time.time()
    model.fit(*flat['train'])
    results[name] = {}
    for split in splits:
      voxels, labels = flat[split]
      probabilities = np.zeros((len(labels), meta['num_classes']))
      probabilities[:, model.classes_] = model.predict_proba(voxels)
      results[name].update(
          (f'{split}.{metric}', value)
          for metric, value in scores(
              labels, probabilities, meta['task']
          ).items()
      )
    results[name]['seconds'] = time.time() - start
  return results


def format_results(results: dict[str, dict[str, float]]) -> str:
  """One line per baseline: its scores and seconds."""
  return '\n'.join(
      f'{name}: '
      + ', '.join(f'{k} {v:.3f}' for k, v in row.items() if k != 'seconds')
      + f' ({row["seconds"]:.1f} s)'
      for name, row in results.items()
  )


def _run() -> None:
  config = default_config.with_defaults(FLAGS.config)
  splits = (
      ('validation',)
      if config.dataset_configs.num_folds
      else ('test', 'validation')
  )
  print(format_results(evaluate(config, splits)))


FLAGS = flags.FLAGS

if __name__ == '__main__':
  config_flags.DEFINE_config_file(
      'config',
      None,
      'Experiment config file (get_config()), as main.py takes it.',
      lock_config=True,
  )
  flags.mark_flags_as_required(['config'])
  app.run(command_line.absl_main(_run, ValueError, FileNotFoundError))
