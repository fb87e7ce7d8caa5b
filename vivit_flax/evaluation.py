"""Dataset-level evaluation: weighted top-1/top-5 and loss, MedMNIST's official AUC, confusion matrix."""

from __future__ import annotations

import contextlib
import io
from typing import Callable, Iterable

import jax
import numpy as np
from absl import logging

from vivit_flax import train_utils


def medmnist_auc(labels: np.ndarray, probabilities: np.ndarray, task: str) -> float:
  """MedMNIST's AUC (`medmnist.evaluator.getAUC`): mean one-vs-rest ROC AUC over classes.

  Returns NaN, with a warning, when a class is absent from `labels` (AUC is undefined).
  """
  with contextlib.redirect_stdout(io.StringIO()):  # medmnist's __init__ prints about torch.
    from medmnist.evaluator import getAUC  # pylint: disable=g-import-not-at-top
  if len(np.unique(labels)) < probabilities.shape[-1] and task != 'binary-class':
    logging.warning('AUC undefined: only %d of %d classes occur in the labels.',
                    len(np.unique(labels)), probabilities.shape[-1])
    return float('nan')
  return float(getAUC(labels, probabilities, task))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts [true class, predicted class]."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def evaluate(p_eval_step: Callable, state, batches: Iterable[dict], *,
             task: str) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Runs the pmapped eval step over a finite iterator and scores the whole split.

  Returns the metrics (accuracy, top_5_accuracy, loss, auc, num_examples) and the
  predictions of every real (non-padding) example: probabilities, labels, confusion matrix.
  Every process gets the same numbers: the step already summed and gathered across devices.
  """
  metrics_list, gathered = [], []
  for batch in batches:
    metrics, outputs = p_eval_step(state, batch)
    metrics_list.append(metrics)
    gathered.append(train_utils.unreplicate(outputs))
  if not metrics_list:
    raise ValueError('The evaluation split is empty.')
  results = train_utils.summarize_metrics(metrics_list)
  outputs = jax.device_get(gathered)
  flat = {k: np.concatenate([o[k].reshape((-1,) + o[k].shape[2:]) for o in outputs])
          for k in outputs[0]}
  keep = flat['batch_mask'] > 0
  probabilities, labels = flat['probabilities'][keep], flat['labels'][keep]
  num_classes = probabilities.shape[-1]
  results['num_examples'] = int(keep.sum())
  results['auc'] = medmnist_auc(labels, probabilities, task)
  predictions = {
      'probabilities': probabilities,
      'labels': labels,
      'confusion_matrix': confusion_matrix(labels, probabilities.argmax(-1), num_classes),
  }
  return results, predictions
