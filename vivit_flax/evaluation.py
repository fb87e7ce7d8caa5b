"""Dataset-level evaluation: weighted top-1/top-5 and loss, balanced accuracy, MedMNIST's official
AUC, confusion matrix (and its image for TensorBoard and reports)."""

from __future__ import annotations

import contextlib
import io
from typing import Callable, Iterable, Sequence

import jax
import numpy as np
from absl import logging
from PIL import Image, ImageDraw, ImageFont

from vivit_flax import train_utils


def medmnist_auc(
    labels: np.ndarray, probabilities: np.ndarray, task: str
) -> float:
  """MedMNIST's AUC (`medmnist.evaluator.getAUC`): mean one-vs-rest ROC AUC over classes.

  Returns NaN, with a warning, when a class is absent from `labels` (AUC is undefined).
  """
  with contextlib.redirect_stdout(
      io.StringIO()
  ):  # medmnist's __init__ prints about torch.
    from medmnist.evaluator import getAUC  # pylint: disable=g-import-not-at-top
  if (
      len(np.unique(labels)) < probabilities.shape[-1]
      and task != 'binary-class'
  ):
    logging.warning(
        'AUC undefined: only %d of %d classes occur in the labels.',
        len(np.unique(labels)),
        probabilities.shape[-1],
    )
    return float('nan')
  return float(getAUC(labels, probabilities, task))


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> np.ndarray:
  """Counts [true class, predicted class]."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def balanced_accuracy(matrix: np.ndarray) -> float:
  """Mean per-class recall of a confusion matrix [true, predicted], over the classes that occur."""
  matrix = np.asarray(matrix)
  support = matrix.sum(axis=1)
  present = support > 0
  return float(np.mean(np.diag(matrix)[present] / support[present]))


CONFUSION_CELL = 40  # Confusion-matrix image cell size, pixels.
_PAD = 6
_BLUE = np.array([31, 94, 168], np.float32)


def _text_size(font, text: str) -> tuple[int, int]:
  left, top, right, bottom = font.getbbox(text)
  return right - left, bottom - top


def _vertical_text(text: str, font) -> Image.Image:
  """`text` in black, rotated to read bottom to top, on a transparent background."""
  width, height = _text_size(font, text)
  image = Image.new('RGBA', (width + 2, height + 4), (0, 0, 0, 0))
  ImageDraw.Draw(image).text((1, 2), text, font=font, fill='black', anchor='lt')
  return image.rotate(90, expand=True)


def confusion_matrix_image(
    matrix: np.ndarray, label_names: Sequence[str]
) -> np.ndarray:
  """A confusion matrix [true, predicted] drawn as uint8 RGB [H, W, 3]: each cell shows its count
  on a blue whose depth is the count's share of its row; rows are true classes, columns
  predicted ones. For TensorBoard: writer.write_images(step, {'confusion_matrix': image[None]}).
  """
  matrix = np.asarray(matrix)
  n, cell = len(matrix), CONFUSION_CELL
  names = [
      str(label_names[i]) if i < len(label_names) else str(i) for i in range(n)
  ]
  font, title_font = ImageFont.load_default(size=12), ImageFont.load_default(
      size=14
  )
  label_w = max(_text_size(font, name)[0] for name in names) + 2 * _PAD
  title_h = _text_size(title_font, 'Predicted')[1] + 2 * _PAD
  left, top = title_h + label_w, title_h + label_w
  image = Image.new(
      'RGB', (left + n * cell + _PAD, top + n * cell + _PAD), 'white'
  )
  draw = ImageDraw.Draw(image)
  draw.text(
      (left + n * cell // 2, _PAD),
      'Predicted',
      font=title_font,
      fill='black',
      anchor='mt',
  )
  true_title = _vertical_text('True', title_font)
  image.paste(
      true_title, (_PAD, top + (n * cell - true_title.height) // 2), true_title
  )
  shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
  for i, name in enumerate(names):
    draw.text(
        (left - _PAD, top + i * cell + cell // 2),
        name,
        font=font,
        fill='black',
        anchor='rm',
    )
    label = _vertical_text(name, font)
    image.paste(
        label,
        (
            left + i * cell + (cell - label.width) // 2,
            top - _PAD - label.height,
        ),
        label,
    )
    for j in range(n):
      colour = tuple(int(c) for c in 255 - shares[i, j] * (255 - _BLUE))
      box = (left + j * cell, top + i * cell)
      draw.rectangle(
          [box, (box[0] + cell - 1, box[1] + cell - 1)],
          fill=colour,
          outline=(200, 200, 200),
      )
      draw.text(
          (box[0] + cell // 2, box[1] + cell // 2),
          str(int(matrix[i, j])),
          font=font,
          fill='white' if shares[i, j] > 0.5 else 'black',
          anchor='mm',
      )
  return np.asarray(image)


def evaluate(
    p_eval_step: Callable, state, batches: Iterable[dict], *, task: str
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Runs the pmapped eval step over a finite iterator and scores the whole split.

  Returns the metrics (accuracy, top_5_accuracy, loss, balanced_accuracy, auc, num_examples)
  and the
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
  flat = {
      k: np.concatenate([o[k].reshape((-1,) + o[k].shape[2:]) for o in outputs])
      for k in outputs[0]
  }
  keep = flat['batch_mask'] > 0
  probabilities, labels = flat['probabilities'][keep], flat['labels'][keep]
  num_classes = probabilities.shape[-1]
  matrix = confusion_matrix(labels, probabilities.argmax(-1), num_classes)
  results['num_examples'] = int(keep.sum())
  results['balanced_accuracy'] = balanced_accuracy(matrix)
  results['auc'] = medmnist_auc(labels, probabilities, task)
  predictions = {
      'probabilities': probabilities,
      'labels': labels,
      'confusion_matrix': matrix,
  }
  return results, predictions
