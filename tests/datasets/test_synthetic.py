"""The synthetic 3D shape set: MedMNIST layout, determinism, shapes as named, atomic files with MD5."""

import hashlib
import os

import numpy as np
import pytest

from vivit_flax.datasets import synthetic

SIZES = dict(num_train=40, num_val=9, num_test=13)


@pytest.fixture(scope='module')
def small():
  return synthetic.generate(seed=0, **SIZES)


def test_layout_dtypes_and_shapes(small):
  assert sorted(small) == sorted(
      f'{s}_{k}' for s in ('train', 'val', 'test') for k in ('images', 'labels')
  )
  for split, n in zip(('train', 'val', 'test'), SIZES.values()):
    images, labels = small[f'{split}_images'], small[f'{split}_labels']
    assert images.dtype == np.uint8 and images.shape == (n, 28, 28, 28)
    assert labels.dtype == np.uint8 and labels.shape == (n, 1)
    assert labels.max() < synthetic.NUM_CLASSES
  assert len(synthetic.LABEL_NAMES) == synthetic.NUM_CLASSES == 11
  assert synthetic.SPLIT_SIZES == {
      'train': 971,
      'val': 161,
      'test': 610,
  }  # OrganMNIST3D's


def test_deterministic_by_seed(small):
  again = synthetic.generate(seed=0, **SIZES)
  other = synthetic.generate(seed=1, **SIZES)
  for k in small:
    np.testing.assert_array_equal(small[k], again[k])
  assert not np.array_equal(small['train_images'], other['train_images'])


def test_split_size_leaves_other_splits_unchanged(small):
  more = synthetic.generate(seed=0, num_train=50, num_val=9, num_test=13)
  np.testing.assert_array_equal(more['val_images'], small['val_images'])
  np.testing.assert_array_equal(more['test_labels'], small['test_labels'])


def test_volumes_vary_in_intensity_and_are_not_saturated(small):
  images = small['train_images']
  means = images.reshape(len(images), -1).mean(1)
  assert means.std() > 5 and 10 < means.mean() < 200
  assert (
      images.reshape(len(images), -1).max(1)
      > images.reshape(len(images), -1).min(1) + 50
  ).all()


def _spread(images):
  """Mean intensity-weighted variance of voxel positions above the background, per axis (T, H, W)."""
  x = images.astype(np.float32)
  x = np.clip(x - np.median(x, axis=(1, 2, 3), keepdims=True), 0, None)
  w = x / x.sum(axis=(1, 2, 3), keepdims=True)
  out = []
  for axis in range(3):
    g = np.arange(28, dtype=np.float32).reshape(
        [-1 if a == axis else 1 for a in range(3)]
    )
    mean = (w * g).sum(axis=(1, 2, 3), keepdims=True)
    out.append((w * (g - mean) ** 2).sum(axis=(1, 2, 3)).mean())
  return np.array(out)


def test_axis_cylinders_lie_along_their_axis():
  images, labels = synthetic.generate_split(seed=3, split_id=0, n=220)
  for name, axis in (('cylinder_t', 0), ('cylinder_h', 1), ('cylinder_w', 2)):
    spread = _spread(images[labels[:, 0] == synthetic.LABEL_NAMES.index(name)])
    assert spread.argmax() == axis, (name, spread)


def test_write_is_atomic_with_md5_sidecar(tmp_path):
  path = str(tmp_path / 'sub' / synthetic.FILE_NAME)
  md5 = synthetic.write(path, seed=2, **SIZES)
  with open(path, 'rb') as f:
    assert hashlib.md5(f.read()).hexdigest() == md5
  with open(path + '.md5') as f:
    assert f.read() == f'{md5}  {synthetic.FILE_NAME}\n'
  assert sorted(os.listdir(tmp_path / 'sub')) == [
      synthetic.FILE_NAME,
      synthetic.FILE_NAME + '.md5',
  ]
  with np.load(path) as npz:
    np.testing.assert_array_equal(
        npz['val_labels'], synthetic.generate(seed=2, **SIZES)['val_labels']
    )


def test_cli(tmp_path, capsys):
  synthetic.main(
      [
          '--out',
          str(tmp_path),
          '--seed',
          '5',
          '--num_train',
          '6',
          '--num_val',
          '2',
          '--num_test',
          '3',
      ]
  )
  assert str(tmp_path / synthetic.FILE_NAME) in capsys.readouterr().out
  with np.load(tmp_path / synthetic.FILE_NAME) as npz:
    assert npz['train_images'].shape == (6, 28, 28, 28) and npz[
        'test_labels'
    ].shape == (3, 1)
  assert (tmp_path / (synthetic.FILE_NAME + '.md5')).exists()
