"""User .npz data and the synthetic3d set, read through get_dataset."""

import hashlib
import os

import ml_collections
import numpy as np
import pytest

from vivit_flax import datasets
from vivit_flax.datasets import npz_video
from vivit_flax.datasets import synthetic

DEVICES = dict(process_index=0, process_count=1, local_device_count=2)


def _config(dataset_name, **dataset_configs):
  return ml_collections.ConfigDict(
      dict(
          dataset_name=dataset_name,
          dataset_configs=dataset_configs,
          batch_size=4,
          eval_batch_size=6,
          rng_seed=0,
          data_dtype_str='float32',
      )
  )


def _md5(path):
  with open(path, 'rb') as f:
    return hashlib.md5(f.read()).hexdigest()


def test_uint8_video_without_channels(tmp_path, make_npz):
  path = str(tmp_path / 'clips.npz')
  arrays = make_npz(path, sizes=(10, 3, 5), shape=(4, 6, 5), num_classes=3)
  ds = datasets.get_dataset(_config('npz_video', path=path), **DEVICES)
  meta = ds.meta_data
  assert meta['input_shape'] == (-1, 4, 6, 5, 1) and meta['num_classes'] <= 3
  assert (
      meta['num_train_examples'],
      meta['num_eval_examples'],
      meta['num_test_examples'],
  ) == (10, 3, 5)
  assert (
      meta['target_is_onehot']
      and meta['dataset_name'] == 'npz_video'
      and meta['data_file'] == path
  )
  assert ds.steps_per_epoch == 2
  images, labels = ds.arrays('validation')
  np.testing.assert_array_equal(images[..., 0], arrays['val_images'])
  np.testing.assert_array_equal(labels, arrays['val_labels'][:, 0])
  assert labels.dtype == np.int32
  batch = next(ds.eval_iter('test'))
  assert batch['inputs'].shape == (2, 3, 4, 6, 5, 1)
  np.testing.assert_allclose(
      batch['inputs'].reshape(6, 4, 6, 5)[:5],
      arrays['test_images'] / 255,
      rtol=1e-6,
  )
  assert batch['batch_mask'].sum() == 5


def test_float_video_with_channels_and_label_names(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {
      f'{s}_images': rng.random((n, 3, 4, 4, 2)).astype(np.float32)
      for s, n in (('train', 8), ('val', 2), ('test', 2))
  }
  arrays.update(
      {
          f'{s}_labels': np.zeros(n, np.int64)
          for s, n in (('train', 8), ('val', 2), ('test', 2))
      }
  )
  path = str(tmp_path / 'f.npz')
  np.savez(path, label_names=np.array(['a', 'b']), **arrays)
  ds = datasets.get_dataset(_config('npz_video', path=path), **DEVICES)
  assert (
      ds.meta_data['label_names'] == ['a', 'b']
      and ds.meta_data['num_classes'] == 2
  )
  batch = next(ds.train_iter(0))
  assert batch['inputs'].shape == (2, 2, 3, 4, 4, 2) and batch[
      'label'
  ].shape == (2, 2, 2)
  assert batch['inputs'].max() <= 1


def test_float_out_of_range_is_rejected(tmp_path, make_npz):
  path = str(tmp_path / 'f.npz')
  arrays = make_npz(path, shape=(2, 3, 3))
  arrays['train_images'] = arrays['train_images'].astype(np.float32)
  np.savez(path, **arrays)
  with pytest.raises(
      ValueError,
      match=r'f\.npz: train_images is floating point .* must already be scaled',
  ):
    datasets.get_dataset(_config('npz_video', path=path), **DEVICES)


def test_sidecar_md5_checked_when_present(tmp_path, make_npz):
  path = str(tmp_path / 'v.npz')
  make_npz(path, shape=(2, 3, 3))
  with open(path + '.md5', 'w') as f:
    f.write(_md5(path) + '  v.npz\n')
  assert (
      datasets.get_dataset(
          _config('npz_video', path=path), **DEVICES
      ).meta_data['num_train_examples']
      == 23
  )
  with open(path + '.md5', 'w') as f:
    f.write('0' * 32)
  with pytest.raises(ValueError) as e:
    datasets.get_dataset(_config('npz_video', path=path), **DEVICES)
  assert (
      f'MD5 mismatch for {path}: expected {"0" * 32}, got {_md5(path)}'
      in str(e.value)
  )


def test_truncated_or_incomplete_npz_names_the_file(tmp_path, make_npz):
  path = str(tmp_path / 'v.npz')
  make_npz(path, shape=(2, 3, 3))
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(ValueError, match=f'{path} is corrupt or truncated'):
    datasets.get_dataset(_config('npz_video', path=path), **DEVICES)
  np.savez(path, train_images=np.zeros((4, 2, 2, 2), np.uint8))
  with pytest.raises(
      ValueError,
      match=rf"{path} is not a MedMNIST-layout .npz: missing keys \['train_labels'",
  ):
    datasets.get_dataset(_config('npz_video', path=path), **DEVICES)


def test_label_names_must_cover_labels(tmp_path, make_npz):
  path = str(tmp_path / 'v.npz')
  make_npz(
      path, shape=(2, 3, 3), num_classes=4, label_names=np.array(['x', 'y'])
  )
  with pytest.raises(ValueError, match='only 2 label_names'):
    datasets.get_dataset(_config('npz_video', path=path), **DEVICES)


def test_missing_path(tmp_path):
  with pytest.raises(ValueError, match='dataset_configs.path'):
    datasets.get_dataset(_config('npz_video', path=None), **DEVICES)
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'nope.npz')):
    datasets.get_dataset(
        _config('npz_video', path=str(tmp_path / 'nope.npz')), **DEVICES
    )


def test_unknown_dataset_and_indivisible_batch(tmp_path):
  with pytest.raises(
      ValueError, match="config.dataset_name='mnist' is not one of"
  ):
    datasets.get_dataset(_config('mnist'), **DEVICES)
  with pytest.raises(ValueError, match='multiple of process_count'):
    datasets.get_dataset(
        _config('npz_video', path='unused'),
        process_index=0,
        process_count=3,
        local_device_count=1,
    )


def test_synthetic3d_generated_when_absent_then_read(tmp_path):
  ds = datasets.get_dataset(
      _config('synthetic3d', data_dir=str(tmp_path)), **DEVICES
  )
  path = str(tmp_path / synthetic.FILE_NAME)
  meta = ds.meta_data
  assert meta['data_file'] == path and os.path.exists(path + '.md5')
  assert (
      meta['label_names'] == list(synthetic.LABEL_NAMES)
      and meta['num_classes'] == 11
  )
  assert (
      meta['num_train_examples'],
      meta['num_eval_examples'],
      meta['num_test_examples'],
  ) == (971, 161, 610)
  assert meta['input_shape'] == (-1, 28, 28, 28, 1)
  images, labels = ds.arrays('train')
  np.testing.assert_array_equal(
      labels, synthetic.generate_split(0, 0, 971)[1][:, 0]
  )
  assert images.dtype == np.uint8


def test_synthetic3d_checks_its_sidecar(tmp_path):
  path = str(tmp_path / 'small.npz')
  synthetic.write(path, seed=1, num_train=8, num_val=2, num_test=3)
  ds = datasets.get_dataset(_config('synthetic3d', path=path), **DEVICES)
  assert (
      ds.meta_data['num_train_examples'] == 8
      and ds.meta_data['dataset_name'] == 'synthetic3d'
  )
  expected = _md5(path)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) - 100)
  with pytest.raises(ValueError) as e:
    datasets.get_dataset(_config('synthetic3d', path=path), **DEVICES)
  message = str(e.value)
  assert (
      f'MD5 mismatch for {path}: expected {expected}, got {_md5(path)}'
      in message
  )
  assert 're-generated' in message
  os.remove(path + '.md5')
  with pytest.raises(FileNotFoundError, match=f'{path}.md5 is missing'):
    datasets.get_dataset(_config('synthetic3d', path=path), **DEVICES)


def test_resolve_data_dir(monkeypatch, tmp_path):
  monkeypatch.setenv('MEDMNIST_ROOT', str(tmp_path / 'env'))
  assert npz_video.resolve_data_dir('/x') == '/x'
  assert npz_video.resolve_data_dir(None) == str(tmp_path / 'env')
  monkeypatch.delenv('MEDMNIST_ROOT')
  monkeypatch.setenv('HOME', str(tmp_path))
  assert npz_video.resolve_data_dir(None) == str(tmp_path / '.medmnist')


def test_synthetic3d_generation_follows_the_config(tmp_path):
  sizes = dict(num_train=12, num_val=5, num_test=3)
  ds = datasets.get_dataset(
      _config('synthetic3d', data_dir=str(tmp_path), seed=4, **sizes), **DEVICES
  )
  meta = ds.meta_data
  assert (
      meta['num_train_examples'],
      meta['num_eval_examples'],
      meta['num_test_examples'],
  ) == (12, 5, 3)
  np.testing.assert_array_equal(
      ds.arrays('validation')[1], synthetic.generate_split(4, 1, 5)[1][:, 0]
  )
  with pytest.raises(ValueError) as e:
    datasets.get_dataset(
        _config('synthetic3d', data_dir=str(tmp_path), num_train=20), **DEVICES
    )
  path = str(tmp_path / synthetic.FILE_NAME)
  assert (
      f"{path} holds {{'train': 12, 'val': 5, 'test': 3}} examples per split"
      in str(e.value)
  )
  assert "asks for {'train': 20}" in str(e.value) and 'Delete' in str(e.value)
