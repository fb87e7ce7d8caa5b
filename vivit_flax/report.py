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

With --attention (inference.load_explainer's attention rollout maps), also:

  samples/sample_<i>_attention.gif  the volume slice by slice with its attention map overlaid
                          (colour and opacity grow with the attention per voxel, on the scale
                          printed under each frame, in multiples of a uniform map), for the
                          num_samples shown and for those of attention.html
  attention.html          the first num_samples / 2 (rounded up) correct and wrong predictions
                          of the split side by side, with their maps (linked from index.html)

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

from vivit_flax import (
    checkpoints,
    command_line,
    datasets,
    evaluation,
    inference,
)

GIF_SIZE = 128  # GIF frames are upscaled (nearest neighbour) to at least this many pixels
GIF_FRAME_MS = 80
PREDICT_BATCH = 32
_CELL = evaluation.CONFUSION_CELL
_PAD = 6
_RIGHT, _WRONG = (26, 127, 55), (207, 34, 46)
# Colour map of the attention overlays: five stops from dark purple through red and orange to
# pale yellow (close to matplotlib's 'inferno'), interpolated into a 256-entry lookup table.
_HEAT_STOPS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
    np.float64,
)
HEAT_LUT = np.stack(
    [
        np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, 5), channel)
        for channel in _HEAT_STOPS.T
    ],
    axis=-1,
).astype(np.uint8)
_MAX_OPACITY = 0.6  # of the overlay where attention is highest; zero attention shows the volume


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


def _with_position_bar(image: Image.Image, t: int, depth: int) -> Image.Image:
  """`image` of slice t of `depth` over a bar whose filled length shows the slice's position
  (so no two consecutive frames are equal, which GIF writers would merge)."""
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
  return frame


def volume_frames(volume: np.ndarray) -> list[Image.Image]:
  """The slices of a [T, H, W, C] volume as upscaled frames, each above its position bar."""
  depth, scale = len(volume), _scale(volume.shape)
  return [
      _with_position_bar(slice_image(volume, t, scale), t, depth)
      for t in range(depth)
  ]


def relative_attention(attention: np.ndarray) -> np.ndarray:
  """Attention mass per voxel [T, H, W] in multiples of a uniform map's (1 / voxels)."""
  return attention * attention.size


def overlay_image(
    volume: np.ndarray, relative: np.ndarray, t: int, scale: int, top: float
) -> Image.Image:
  """Slice t of a [T, H, W, C] volume, upscaled `scale` times, under the heat colours of its
  relative attention [T, H, W] on the scale 0..top: colour and opacity grow with attention.
  """
  level = np.clip(relative[t] / top, 0.0, 1.0)
  heat = HEAT_LUT[np.round(level * 255).astype(np.int32)].astype(np.float32)
  base = np.asarray(slice_image(volume, t, 1).convert('RGB'), np.float32)
  opacity = _MAX_OPACITY * level[..., None]
  blended = (1 - opacity) * base + opacity * heat
  image = Image.fromarray((blended + 0.5).astype(np.uint8), 'RGB')
  return image.resize(
      (image.width * scale, image.height * scale), Image.NEAREST
  )


def colour_scale(width: int, top: float) -> Image.Image:
  """The overlays' colour bar, `width` pixels wide, labelled 0 and `top` (multiples of a
  uniform map)."""
  font = _font(11)
  label = f'{top:.3g}x uniform'
  text_h = _text_size(font, '0' + label)[1]
  bar_h = 8
  image = Image.new('RGB', (width, bar_h + text_h + 6), (255, 255, 255))
  ramp = HEAT_LUT[np.linspace(0, 255, width).round().astype(np.int32)]
  image.paste(Image.fromarray(np.repeat(ramp[None], bar_h, axis=0), 'RGB'))
  draw = ImageDraw.Draw(image)
  draw.text((1, bar_h + 2), '0', font=font, fill=(0, 0, 0))
  draw.text(
      (width - 1, bar_h + 2), label, font=font, fill=(0, 0, 0), anchor='ra'
  )
  return image


def attention_frames(
    volume: np.ndarray, attention: np.ndarray
) -> list[Image.Image]:
  """The slices of a [T, H, W, C] volume with its attention map [T, H, W] (mass per voxel)
  overlaid, each above its position bar and the colour scale (0 to the volume's highest
  relative attention)."""
  depth, scale = len(volume), _scale(volume.shape)
  relative = relative_attention(attention)
  top = max(float(relative.max()), 1e-6)
  legend = colour_scale(volume.shape[2] * scale, top)
  frames = []
  for t in range(depth):
    image = _with_position_bar(
        overlay_image(volume, relative, t, scale, top), t, depth
    )
    frame = Image.new('RGB', (image.width, image.height + legend.height))
    frame.paste(image)
    frame.paste(legend, (0, image.height))
    frames.append(frame)
  return frames


def gif_bytes(volume: np.ndarray, attention: np.ndarray | None = None) -> bytes:
  """An animated, looping GIF of a [T, H, W, C] volume, one frame per slice; with an attention
  map [T, H, W], that map overlaid (`attention_frames`)."""
  frames = (
      volume_frames(volume)
      if attention is None
      else attention_frames(volume, attention)
  )
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


def _data_uri(mime: str, data: bytes) -> str:
  return f'data:{mime};base64,{base64.b64encode(data).decode("ascii")}'


def _figures(
    gifs: Sequence[bytes], captions: Sequence[str], correct: Sequence[bool]
) -> str:
  """A grid of captioned GIFs (captions green when right, red when wrong)."""
  columns = max(1, math.ceil(math.sqrt(len(gifs))))
  figures = '\n'.join(
      f'<figure><img src="{_data_uri("image/gif", gif)}" alt="{html.escape(text)}">'
      f'<figcaption class="{"right" if ok else "wrong"}">{html.escape(text)}</figcaption></figure>'
      for gif, text, ok in zip(gifs, captions, correct)
  )
  return (
      f'<div class="grid" style="grid-template-columns: repeat({columns},'
      f' max-content)">\n{figures}\n</div>'
  )


def _page(title: str, summary: str, body: str) -> str:
  """A self-contained HTML page: title, summary and `body`."""
  return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; }}
.grid {{ display: grid; gap: 12px; }}
.sides {{ display: flex; gap: 48px; align-items: flex-start; }}
figure {{ margin: 0; text-align: center; }}
img {{ image-rendering: pixelated; }}
figcaption {{ font-size: 13px; margin-top: 4px; }}
.right {{ color: rgb{_RIGHT}; }} .wrong {{ color: rgb{_WRONG}; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(summary)}</p>
{body}
</body></html>
"""


def html_page(
    title: str,
    summary: str,
    gifs: Sequence[bytes],
    captions: Sequence[str],
    correct: Sequence[bool],
    confusion_png: bytes,
    attention_page: str | None = None,
) -> str:
  """A self-contained HTML page: captioned GIFs in a grid, then the confusion matrix; with
  `attention_page` (a relative address), a link to it."""
  link = (
      f'<p><a href="{html.escape(attention_page)}">Attention maps of correct and'
      ' wrong predictions</a></p>\n'
      if attention_page
      else ''
  )
  return _page(
      title,
      summary,
      f'{link}{_figures(gifs, captions, correct)}\n<h2>Confusion matrix</h2>\n'
      f'<img src="{_data_uri("image/png", confusion_png)}" alt="confusion matrix">',
  )


def attention_html_page(
    title: str,
    summary: str,
    sides: Sequence[tuple[str, Sequence[bytes], Sequence[str]]],
) -> str:
  """A self-contained HTML page of attention GIFs in columns side by side: `sides` holds
  (heading, GIFs, captions) for the correct predictions, then the wrong ones."""
  columns = '\n'.join(
      f'<section><h2>{html.escape(heading)}</h2>\n'
      f'{_figures(gifs, captions, [i == 0] * len(gifs))}</section>'
      for i, (heading, gifs, captions) in enumerate(sides)
  )
  return _page(title, summary, f'<div class="sides">\n{columns}\n</div>')


def _attention_examples(
    correct: np.ndarray, shown: int, per_side: int
) -> tuple[list[int], list[int], list[int]]:
  """Indices to draw with attention: the first `shown` examples, and the first `per_side`
  correct and wrong ones; then the correct and wrong lists."""
  right = np.flatnonzero(correct)[:per_side].tolist()
  wrong = np.flatnonzero(~correct)[:per_side].tolist()
  return sorted(set(range(shown)) | set(right) | set(wrong)), right, wrong


def _write_attention(
    workdir: str,
    out: str,
    images: np.ndarray,
    correct: np.ndarray,
    captions: Sequence[str],
    num_samples: int,
    title: str,
) -> dict[str, object]:
  """Explains the examples the report shows and the first correct and wrong ones; writes their
  attention GIFs and attention.html; returns their paths ('attention_gifs',
  'attention_html')."""
  drawn, right, wrong = _attention_examples(
      correct, min(num_samples, len(images)), math.ceil(num_samples / 2)
  )
  _, maps = inference.load_explainer(workdir)(images[drawn])
  gifs, paths = {}, []
  for i, attention in zip(tqdm.tqdm(drawn, desc='attention gifs'), maps):
    gifs[i] = gif_bytes(images[i], attention)
    paths.append(os.path.join(out, 'samples', f'sample_{i:03d}_attention.gif'))
    with open(paths[-1], 'wb') as f:
      f.write(gifs[i])
  sides = [
      (
          f'{heading}: the first {len(indices)} of {count}',
          [gifs[i] for i in indices],
          [f'#{i} {captions[i]}' for i in indices],
      )
      for heading, indices, count in (
          ('Correct', right, int(correct.sum())),
          ('Wrong', wrong, int((~correct).sum())),
      )
  ]
  page = os.path.join(out, 'attention.html')
  with open(page, 'w', encoding='utf-8') as f:
    f.write(
        attention_html_page(
            title,
            'Attention rollout through every encoder layer, read through the'
            ' pooling (inference.load_explainer): colour and opacity grow with'
            ' the attention mass per voxel, in multiples of a uniform map, on'
            " the scale under each GIF (its top is the volume's highest"
            ' voxel). Voxels no token embeds show none.',
            sides,
        )
    )
  return {'attention_gifs': paths, 'attention_html': page}


def write_report(
    workdir: str,
    split: str = 'test',
    num_samples: int = 25,
    out: str | None = None,
    attention: bool = False,
) -> dict[str, object]:
  """Predicts `split` with the workdir's best (else newest) checkpoint and writes the report
  files to `out` (default <workdir>/report); returns their paths ('gifs', 'grid',
  'confusion_matrix', 'html', and with `attention` 'attention_gifs', 'attention_html').
  """
  out = out or os.path.join(workdir, 'report')
  config = inference.load_config(workdir)
  predict = inference.load_predictor(workdir)
  _, metadata = checkpoints.restore_params(workdir, 'best')
  dataset = datasets.get_dataset(
      config, process_index=0, process_count=1, local_device_count=1
  )
  images, labels = dataset.arrays(split)
  names = metadata.get('label_names') or dataset.meta_data['label_names']
  predictions = inference.in_batches(
      predict, images, PREDICT_BATCH, progress='predict'
  ).argmax(-1)
  every_caption = [
      caption(names[t], names[p]) for t, p in zip(labels, predictions)
  ]
  every_correct = predictions == labels
  shown = range(min(num_samples, len(images)))
  captions = [every_caption[i] for i in shown]
  correct = [bool(every_correct[i]) for i in shown]

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
  title = f'ViViT predictions ({config.experiment_name})'
  if attention:
    paths.update(
        _write_attention(
            workdir,
            out,
            images,
            every_correct,
            every_caption,
            num_samples,
            f'ViViT attention maps ({config.experiment_name}, {split} split)',
        )
    )
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
            title,
            summary,
            gifs,
            captions,
            correct,
            confusion_png,
            'attention.html' if attention else None,
        )
    )
  return paths


FLAGS = flags.FLAGS


def _write_report_of_flags() -> None:
  paths = write_report(
      FLAGS.workdir, FLAGS.split, FLAGS.num_samples, FLAGS.out, FLAGS.attention
  )
  attention = (
      f', {paths["attention_html"]} and {len(paths["attention_gifs"])} attention GIFs'
      if FLAGS.attention
      else ''
  )
  print(
      f'wrote {paths["html"]}, {paths["grid"]}, {paths["confusion_matrix"]} and '
      f'{len(paths["gifs"])} GIFs{attention}'
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
  flags.DEFINE_bool(
      'attention',
      False,
      'Also draw attention maps (inference.load_explainer): an overlaid GIF per'
      ' sample shown and attention.html, correct and wrong predictions side by'
      ' side.',
  )
  flags.mark_flags_as_required(['workdir'])
  app.run(
      command_line.absl_main(
          _write_report_of_flags, ValueError, FileNotFoundError
      )
  )
