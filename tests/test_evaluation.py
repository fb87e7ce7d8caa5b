"""Dataset-level evaluation: balanced accuracy in the results, the confusion-matrix image, and
a trainer that imports no reporting or sweep code."""

import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from vivit_flax import evaluation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
  labels = np.array([0, 0, 0, 0, 1, 1, 3, 3, 3])  # Class 2 is absent.
  predicted = np.array([0, 0, 0, 1, 1, 2, 3, 0, 2])
  matrix = evaluation.confusion_matrix(labels, predicted, 4)
  expected = (3 / 4 + 1 / 2 + 1 / 3) / 3
  assert evaluation.balanced_accuracy(matrix) == pytest.approx(expected)
  with pytest.warns(
      UserWarning
  ):  # sklearn warns about the predicted class absent from labels.
    assert sk_metrics.balanced_accuracy_score(
        labels, predicted
    ) == pytest.approx(expected)


def test_evaluate_reports_balanced_accuracy():
  rng = np.random.default_rng(0)
  probabilities = rng.dirichlet(np.ones(3), size=(2, 8)).astype(np.float32)
  labels = rng.integers(0, 3, size=(2, 8))
  mask = np.ones((2, 8), np.float32)
  mask[1, 5:] = 0  # Padding of the last batch.

  def p_eval_step(
      state, batch
  ):  # Replicated layout: [local devices, all devices, batch, ...].
    del state
    i = batch['index']
    correct = (probabilities[i].argmax(-1) == labels[i]) * mask[i]
    metrics = {
        'accuracy': (np.array([correct.sum()]), np.array([mask[i].sum()]))
    }
    outputs = {
        'probabilities': probabilities[i][None, None],
        'labels': labels[i][None, None],
        'batch_mask': mask[i][None, None],
    }
    return metrics, outputs

  results, predictions = evaluation.evaluate(
      p_eval_step, None, [{'index': 0}, {'index': 1}], task='multi-class'
  )
  keep = mask.reshape(-1) > 0
  true, predicted = labels.reshape(-1)[keep], probabilities.reshape(-1, 3)[
      keep
  ].argmax(-1)
  assert results['num_examples'] == 13
  assert results['balanced_accuracy'] == pytest.approx(
      sk_metrics.balanced_accuracy_score(true, predicted)
  )
  assert results['accuracy'] == pytest.approx(np.mean(true == predicted))
  np.testing.assert_array_equal(
      predictions['confusion_matrix'],
      sk_metrics.confusion_matrix(true, predicted, labels=[0, 1, 2]),
  )


def test_confusion_matrix_image_rows_are_true_classes():
  image = evaluation.confusion_matrix_image(
      np.array([[3, 0], [1, 2]]), ['a', 'b']
  )
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
  assert image.shape[0] >= 2 * evaluation.CONFUSION_CELL


def test_trainer_imports_neither_report_nor_sweep():
  code = (
      'import sys, vivit_flax.trainer; '
      'print([m for m in ("vivit_flax.report", "vivit_flax.sweep") if m in sys.modules])'
  )
  output = subprocess.run(
      [sys.executable, '-c', code],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
  ).stdout
  assert output.strip().splitlines()[-1] == '[]'
