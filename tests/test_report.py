"""Tests for vivit_flax.report on a tiny workdir trained here (5 steps on a uint8 [N, T, H, W]
npz_video file with label names)."""

import base64
import io
import os
import re

import numpy as np
import pytest
from PIL import Image

from configs.synthetic import vivit_smoke
from vivit_flax import report, trainer

DEPTH, SIDE = 6, 8
LABEL_NAMES = ['liver', 'kidney<left>', 'spleen']


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A workdir of 5 training steps on [N, 6, 8, 8] uint8 volumes of 3 named classes."""
  root = tmp_path_factory.mktemp('report')
  rng = np.random.default_rng(0)
  arrays = {'label_names': np.array(LABEL_NAMES)}
  for split, n in (('train', 16), ('val', 8), ('test', 12)):
    arrays[f'{split}_images'] = rng.integers(
        0, 256, (n, DEPTH, SIDE, SIDE), dtype=np.uint8
    )
    arrays[f'{split}_labels'] = rng.integers(0, 3, (n, 1)).astype(np.uint8)
  np.savez(root / 'volumes.npz', **arrays)
  config = vivit_smoke.get_config()
  config.dataset_name = 'npz_video'
  config.dataset_configs.path = str(root / 'volumes.npz')
  config.model.patches.size = (4, 4, 2)
  config.num_training_steps = 5
  config.log_eval_steps = 100
  config.write_summary = False
  trainer.train_and_evaluate(config, str(root / 'run'))
  return str(root / 'run')


def test_report_files(workdir, tmp_path):
  out = str(tmp_path / 'report')
  paths = report.write_report(workdir, split='test', num_samples=5, out=out)
  assert [os.path.basename(p) for p in paths['gifs']] == [
      f'sample_{i:03d}.gif' for i in range(5)
  ]
  scale = report.GIF_SIZE // SIDE
  for path in paths['gifs']:
    with Image.open(path) as gif:
      assert gif.n_frames == DEPTH
      assert gif.width == SIDE * scale and gif.height > SIDE * scale
  with Image.open(paths['grid']) as grid:  # 5 tiles: 3 columns, 2 rows
    assert grid.width >= 3 * SIDE * scale and grid.height >= 2 * SIDE * scale
  with Image.open(paths['confusion_matrix']) as matrix:
    assert (
        matrix.width >= 3 * report._CELL and matrix.height >= 3 * report._CELL
    )

  page = open(paths['html'], encoding='utf-8').read()
  captions = re.findall(
      r'<figcaption class="(?:right|wrong)">(.*?)</figcaption>', page
  )
  assert len(captions) == 5
  names = '|'.join(
      re.escape(n.replace('<', '&lt;').replace('>', '&gt;'))
      for n in LABEL_NAMES
  )
  assert all(
      re.fullmatch(f'T: ({names}) \\| P: ({names})', c) for c in captions
  ), captions
  gifs = re.findall(r'src="data:image/gif;base64,([A-Za-z0-9+/=]+)"', page)
  assert len(gifs) == 5
  with Image.open(io.BytesIO(base64.b64decode(gifs[0]))) as gif:
    assert gif.n_frames == DEPTH
  assert page.count('src="data:image/png;base64,') == 1
  assert 'src="http' not in page and 'src="file' not in page


def test_confusion_matrix_image():
  matrix = np.array([[3, 0, 0], [1, 2, 0], [0, 0, 0]])
  image = report.confusion_matrix_image(matrix, LABEL_NAMES)
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
  assert (
      image.shape[0] >= 3 * report._CELL and image.shape[1] >= 3 * report._CELL
  )
  assert not np.array_equal(
      image, report.confusion_matrix_image(matrix.T, LABEL_NAMES)
  )
  # Cells are blue in proportion to their row share: a full row is darker than an empty one.
  assert (image[..., 2].astype(int) - image[..., 0] > 100).any()


def test_gif_of_float_rgb_volume_keeps_every_slice():
  volume = np.zeros(
      (4, 5, 7, 3), np.float32
  )  # identical slices still give 4 frames
  with Image.open(io.BytesIO(report.gif_bytes(volume))) as gif:
    assert gif.n_frames == 4 and gif.width == 7 * report._scale(volume.shape)


def test_report_with_attention(workdir, tmp_path):
  out = str(tmp_path / 'report')
  paths = report.write_report(
      workdir, split='test', num_samples=4, out=out, attention=True
  )
  names = [os.path.basename(p) for p in paths['attention_gifs']]
  assert all(re.fullmatch(r'sample_\d{3}_attention\.gif', n) for n in names)
  assert [f'sample_{i:03d}_attention.gif' for i in range(4)] == names[:4]
  scale = report.GIF_SIZE // SIDE
  with (
      Image.open(paths['attention_gifs'][0]) as gif,
      Image.open(paths['gifs'][0]) as plain,
  ):
    assert gif.n_frames == DEPTH and gif.width == SIDE * scale
    assert gif.height > plain.height  # the colour scale under each frame

  page = open(paths['attention_html'], encoding='utf-8').read()
  headings = re.findall(r'<h2>(.*?)</h2>', page)
  assert [h.split(':')[0] for h in headings] == ['Correct', 'Wrong']
  right = len(re.findall(r'<figcaption class="right">', page))
  wrong = len(re.findall(r'<figcaption class="wrong">', page))
  assert 0 < right + wrong <= 4 and right <= 2 and wrong <= 2
  assert page.count('src="data:image/gif;base64,') == right + wrong
  index = open(paths['html'], encoding='utf-8').read()
  assert 'href="attention.html"' in index


def test_attention_frames_colour_the_attended_voxels():
  volume = np.full((3, 4, 4, 1), 100, np.uint8)
  attention = np.zeros((3, 4, 4), np.float32)
  attention[1, 2, 3] = 1.0
  frames = report.attention_frames(volume, attention)
  scale = report._scale(volume.shape)
  hot = np.asarray(frames[1], np.int32)
  cold = np.asarray(frames[0], np.int32)
  y, x = 2 * scale + scale // 2, 3 * scale + scale // 2
  assert abs(hot[y, x, 0] - hot[y, x, 2]) > 50  # coloured
  assert (cold[: 4 * scale, : 4 * scale] == 100).all()  # grey volume alone
  # The colour scale runs from the colour map's first entry to its last.
  legend_row = np.asarray(frames[0])[
      frames[0].height - report.colour_scale(4 * scale, 1.0).height + 2
  ]
  np.testing.assert_array_equal(legend_row[0], report.HEAT_LUT[0])
  np.testing.assert_array_equal(legend_row[-1], report.HEAT_LUT[-1])
