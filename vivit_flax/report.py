r"""Prediction report of a workdir: animated volumes captioned with true and predicted class.

  python -m vivit_flax.report --workdir=/tmp/organ [--split=test] [--num_samples=25] \
      [--out=/tmp/organ/report]

Predicts the whole split with the workdir's best checkpoint (else its newest; see
inference.load_predictor) and writes to --out (default <workdir>/report):

  samples/sample_<i>.gif  the first num_samples examples, one frame per depth (time) slice; the
                          bar under each frame shows the slice's position
  grid.png                their central slices, captioned 'T: true | P: predicted'
                          (green when right, red when wrong)
  confusion_matrix.png    counts over the whole split (rows: true class, columns: predicted)
  index.html              a self-contained page of the GIFs, captions and confusion matrix
                          (images inlined as base64 data URIs), as the Keras ViViT example shows

Class names come from the checkpoint's metadata ('label_names').
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from typing import Sequence

import numpy as np
import tqdm
from absl import app, flags
from PIL import Image, ImageDraw, ImageFont

from vivit_flax import checkpoints, command_line, datasets, evaluation, inference

GIF_SIZE = 128  # GIF frames are upscaled (nearest neighbour) to at least this many pixels
GIF_FRAME_MS = 80
PREDICT_BATCH = 32
_CELL = evaluation.CONFUSION_CELL
_PAD = 6
_RIGHT, _WRONG = (26, 127, 55), (207, 34, 46)


def _font(size: int = 13):
  return ImageFont.load_default(size=size)


def _text_size(font, text: str) -> tuple[int, int]:
  left, top, right, bottom = font.getbbox(text)
  return right - left, bottom - top


def to_uint8(volume: np.ndarray) -> np.ndarray:
  """A volume as uint8: uint8 stays, floats in [0, 1] are scaled to 0..255."""
  if volume.dtype == np.uint8:
    return volume
  return (np.clip(volume, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _scale(shape: Sequence[int]) -> int:
  """Upscaling factor of a [T, H, W, C] volume's slices: at least GIF_SIZE pixels, and at least
  one pixel of width per slice."""
  depth, height, width = shape[:3]
  return max(
      1, math.ceil(GIF_SIZE / max(height, width)), math.ceil(depth / width)
  )


def slice_image(volume: np.ndarray, t: int, scale: int) -> Image.Image:
  """Slice t of a [T, H, W, C] volume, upscaled `scale` times: grey for one channel, RGB for
  three, else the mean of the channels in grey."""
  frame = to_uint8(volume[t])
  if frame.shape[-1] == 3:
    image = Image.fromarray(frame, 'RGB')
  else:
    image = Image.fromarray(
        frame[..., 0]
        if frame.shape[-1] == 1
        else frame.mean(-1).astype(np.uint8),
        'L',
    )
  return image.resize(
      (image.width * scale, image.height * scale), Image.NEAREST
  )


def volume_frames(volume: np.ndarray) -> list[Image.Image]:
  """The slices of a [T, H, W, C] volume as upscaled frames, each with a bar below it whose
  filled length shows the slice's position (so no two consecutive frames are equal, which GIF
  writers would merge)."""
  depth, scale = len(volume), _scale(volume.shape)
  frames = []
  for t in range(depth):
    image = slice_image(volume, t, scale)
    grey = image.mode == 'L'
    bar = max(3, image.height // 32)
    frame = Image.new(
        image.mode, (image.width, image.height + bar), 64 if grey else (64,) * 3
    )
    frame.paste(image)
    filled = round((t + 1) * image.width / depth)
    ImageDraw.Draw(frame).rectangle(
        [0, image.height, filled - 1, image.height + bar - 1],
        fill=220 if grey else (220,) * 3,
    )
    frames.append(frame)
  return frames


def gif_bytes(volume: np.ndarray) -> bytes:
  """An animated, looping GIF of a [T, H, W, C] volume, one frame per slice."""
  frames = volume_frames(volume)
  buffer = io.BytesIO()
  frames[0].save(
      buffer,
      format='GIF',
      save_all=True,
      append_images=frames[1:],
      duration=GIF_FRAME_MS,
      loop=0,
  )
  return buffer.getvalue()


def _png_bytes(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format='PNG', optimize=True)
  return buffer.getvalue()


def caption(true_name: str, predicted_name: str) -> str:
  """The Keras example's caption of a prediction."""
  return f'T: {true_name} | P: {predicted_name}'


def grid_image(
    volumes: Sequence[np.ndarray],
    captions: Sequence[str],
    correct: Sequence[bool],
) -> Image.Image:
  """The central slice of each volume above its caption, in a near-square grid of tiles."""
  font = _font()
  tiles = [
      slice_image(v, len(v) // 2, _scale(v.shape)).convert('RGB')
      for v in volumes
  ]
  text_w, text_h = (
      max(_text_size(font, c)[0] for c in captions),
      _text_size(font, 'Tg|')[1],
  )
  tile_w = max(max(t.width for t in tiles), text_w) + 2 * _PAD
  tile_h = max(t.height for t in tiles) + text_h + 3 * _PAD
  columns = math.ceil(math.sqrt(len(tiles)))
  rows = math.ceil(len(tiles) / columns)
  grid = Image.new('RGB', (columns * tile_w, rows * tile_h), 'white')
  draw = ImageDraw.Draw(grid)
  for i, (tile, text, right) in enumerate(zip(tiles, captions, correct)):
    x, y = (i % columns) * tile_w, (i // columns) * tile_h
    grid.paste(tile, (x + (tile_w - tile.width) // 2, y + _PAD))
    draw.text(
        (x + tile_w // 2, y + tile.height + 2 * _PAD),
        text,
        font=font,
        anchor='mt',
        fill=_RIGHT if right else _WRONG,
    )
  return grid


# Moved to evaluation (the trainer draws it for TensorBoard); kept here under its old name.
confusion_matrix_image = evaluation.confusion_matrix_image


def predict_split(
    predict, images: np.ndarray, batch_size: int = PREDICT_BATCH
) -> np.ndarray:
  """Class probabilities of every example, predicted in batches of one shape (the last one padded),
  so the predictor compiles once."""
  probabilities = []
  for start in tqdm.trange(
      0, len(images), batch_size, desc='predict', unit='batch'
  ):
    batch = images[start : start + batch_size]
    padded = np.concatenate(
        [
            batch,
            np.zeros((batch_size - len(batch),) + batch.shape[1:], batch.dtype),
        ]
    )
    probabilities.append(predict(padded)[: len(batch)])
  return np.concatenate(probabilities)


def _data_uri(mime: str, data: bytes) -> str:
  return f'data:{mime};base64,{base64.b64encode(data).decode("ascii")}'


def html_page(
    title: str,
    summary: str,
    gifs: Sequence[bytes],
    captions: Sequence[str],
    correct: Sequence[bool],
    confusion_png: bytes,
) -> str:
  """A self-contained HTML page: captioned GIFs in a grid, then the confusion matrix."""
  columns = math.ceil(math.sqrt(len(gifs)))
  figures = '\n'.join(
      f'<figure><img src="{_data_uri("image/gif", gif)}" alt="sample {i}">'
      f'<figcaption class="{"right" if ok else "wrong"}">{html.escape(text)}</figcaption></figure>'
      for i, (gif, text, ok) in enumerate(zip(gifs, captions, correct))
  )
  return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; }}
.grid {{ display: grid; grid-template-columns: repeat({columns}, max-content); gap: 12px; }}
figure {{ margin: 0; text-align: center; }}
img {{ image-rendering: pixelated; }}
figcaption {{ font-size: 13px; margin-top: 4px; }}
.right {{ color: rgb{_RIGHT}; }} .wrong {{ color: rgb{_WRONG}; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(summary)}</p>
<div class="grid">
{figures}
</div>
<h2>Confusion matrix</h2>
<img src="{_data_uri("image/png", confusion_png)}" alt="confusion matrix">
</body></html>
"""


def write_report(
    workdir: str,
    split: str = 'test',
    num_samples: int = 25,
    out: str | None = None,
) -> dict[str, object]:
  """Predicts `split` with the workdir's best (else newest) checkpoint and writes the report
  files to `out` (default <workdir>/report); returns their paths ('gifs', 'grid',
  'confusion_matrix', 'html')."""
  out = out or os.path.join(workdir, 'report')
  config = inference.load_config(workdir)
  predict = inference.load_predictor(workdir)
  _, metadata = checkpoints.restore_params(workdir, 'best')
  dataset = datasets.get_dataset(
      config, process_index=0, process_count=1, local_device_count=1
  )
  images, labels = dataset.arrays(split)
  names = metadata.get('label_names') or dataset.meta_data['label_names']
  predictions = predict_split(predict, images).argmax(-1)
  shown = range(min(num_samples, len(images)))
  captions = [caption(names[labels[i]], names[predictions[i]]) for i in shown]
  correct = [bool(labels[i] == predictions[i]) for i in shown]

  os.makedirs(os.path.join(out, 'samples'), exist_ok=True)
  gifs, gif_paths = [], []
  for i in tqdm.tqdm(shown, desc='gifs', unit='sample'):
    gifs.append(gif_bytes(images[i]))
    gif_paths.append(os.path.join(out, 'samples', f'sample_{i:03d}.gif'))
    with open(gif_paths[-1], 'wb') as f:
      f.write(gifs[-1])
  paths = {
      'gifs': gif_paths,
      'grid': os.path.join(out, 'grid.png'),
      'confusion_matrix': os.path.join(out, 'confusion_matrix.png'),
      'html': os.path.join(out, 'index.html'),
  }
  grid_image([images[i] for i in shown], captions, correct).save(
      paths['grid'], optimize=True
  )
  matrix = evaluation.confusion_matrix(labels, predictions, len(names))
  confusion_png = _png_bytes(
      Image.fromarray(confusion_matrix_image(matrix, names))
  )
  with open(paths['confusion_matrix'], 'wb') as f:
    f.write(confusion_png)
  accuracy = float(np.mean(predictions == labels))
  summary = (
      f'{os.path.abspath(workdir)}, {split} split: accuracy {accuracy:.4f} over '
      f'{len(labels)} examples; {sum(correct)} of the {len(correct)} shown are right.'
  )
  with open(paths['html'], 'w', encoding='utf-8') as f:
    f.write(
        html_page(
            f'ViViT predictions ({config.experiment_name})',
            summary,
            gifs,
            captions,
            correct,
            confusion_png,
        )
    )
  return paths


FLAGS = flags.FLAGS


def _write_report_of_flags() -> None:
  paths = write_report(FLAGS.workdir, FLAGS.split, FLAGS.num_samples, FLAGS.out)
  print(
      f'wrote {paths["html"]}, {paths["grid"]}, {paths["confusion_matrix"]} and '
      f'{len(paths["gifs"])} GIFs'
  )


if __name__ == '__main__':
  flags.DEFINE_string(
      'workdir', None, 'Training workdir (config.json and checkpoints/).'
  )
  flags.DEFINE_enum(
      'split', 'test', ['train', 'validation', 'test'], 'Split to predict.'
  )
  flags.DEFINE_integer(
      'num_samples', 25, 'Examples to animate and caption (the first ones).'
  )
  flags.DEFINE_string('out', None, 'Output folder (default <workdir>/report).')
  flags.mark_flags_as_required(['workdir'])
  app.run(
      command_line.absl_main(
          _write_report_of_flags, ValueError, FileNotFoundError
      )
  )
