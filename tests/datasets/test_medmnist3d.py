"""MedMNIST 3D files: MD5 checks, clear missing-file errors and the download path, without any network."""

import hashlib
import io
import os
import subprocess
import sys
import urllib.error
import urllib.request

import ml_collections
import numpy as np
import pytest

from vivit_flax import datasets, default_config
from vivit_flax.datasets import medmnist3d

URL = 'https://example.invalid/organmnist3d.npz'
DEVICES = dict(process_index=0, process_count=1, local_device_count=1)


def _config(data_dir, download=False, size=28):
  return ml_collections.ConfigDict(
      dict(
          dataset_name='medmnist3d',
          batch_size=4,
          eval_batch_size=4,
          rng_seed=0,
          dataset_configs=dict(
              name='organmnist3d',
              size=size,
              data_dir=data_dir,
              download=download,
          ),
      )
  )


@pytest.fixture
def fake_organ(tmp_path, monkeypatch, make_npz):
  """A small fake organmnist3d.npz whose MD5 and URL are patched into medmnist's INFO; returns its bytes."""
  source = tmp_path / 'source.npz'
  arrays = make_npz(str(source), sizes=(9, 4, 6))
  data = source.read_bytes()
  info = medmnist3d.medmnist_info()['organmnist3d']
  monkeypatch.setitem(info, 'MD5', hashlib.md5(data).hexdigest())
  monkeypatch.setitem(info, 'url', URL)
  return data, arrays


def _serve(monkeypatch, data, requested):
  def urlopen(url, timeout=None):
    requested.append(url)
    return io.BytesIO(data)

  monkeypatch.setattr(urllib.request, 'urlopen', urlopen)


def test_info_covers_the_six_sets():
  info = medmnist3d.medmnist_info()
  for name in medmnist3d.NAMES:
    assert info[name]['task'] in ('multi-class', 'binary-class')
    assert medmnist3d.file_info(name, 64)[0] == f'{name}_64.npz'
  assert medmnist3d.file_info('vesselmnist3d', 28) == (
      'vesselmnist3d.npz',
      info['vesselmnist3d']['url'],
      info['vesselmnist3d']['MD5'],
  )
  assert (
      medmnist3d.file_info('nodulemnist3d', 64)[2]
      == info['nodulemnist3d']['MD5_64']
  )
  with pytest.raises(ValueError, match='has no size 32'):
    medmnist3d.file_info('organmnist3d', 32)
  with pytest.raises(ValueError, match="Unknown MedMNIST 3D set 'pathmnist'"):
    medmnist3d.file_info('pathmnist', 28)


def test_importing_medmnist_info_prints_nothing():
  code = (
      'from vivit_flax.datasets import medmnist3d; medmnist3d.medmnist_info()'
  )
  out = subprocess.run(
      [sys.executable, '-c', code],
      capture_output=True,
      text=True,
      check=True,
      cwd=os.path.dirname(
          os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
      ),
  )
  assert out.stdout == ''


def test_reads_a_verified_file(tmp_path, fake_organ):
  data, arrays = fake_organ
  (tmp_path / 'organmnist3d.npz').write_bytes(data)
  ds = datasets.get_dataset(_config(str(tmp_path)), **DEVICES)
  meta = ds.meta_data
  assert (
      meta['dataset_name'] == 'organmnist3d' and meta['task'] == 'multi-class'
  )
  assert meta['num_classes'] == 11 and meta['label_names'][:2] == [
      'liver',
      'kidney-right',
  ]
  assert (
      meta['input_shape'] == (-1, 28, 28, 28, 1)
      and meta['num_test_examples'] == 6
  )
  images, labels = ds.arrays('test')
  np.testing.assert_array_equal(images[..., 0], arrays['test_images'])
  np.testing.assert_array_equal(labels, arrays['test_labels'][:, 0])
  assert labels.shape == (6,) and images.shape == (6, 28, 28, 28, 1)
  assert sum(b['batch_mask'].sum() for b in ds.eval_iter('validation')) == 4


def test_medmnist_root_env(tmp_path, fake_organ, monkeypatch):
  (tmp_path / 'organmnist3d.npz').write_bytes(fake_organ[0])
  monkeypatch.setenv('MEDMNIST_ROOT', str(tmp_path))
  assert datasets.get_dataset(_config(None), **DEVICES).meta_data[
      'data_file'
  ] == str(tmp_path / 'organmnist3d.npz')


def test_missing_file_says_where_and_how(tmp_path, fake_organ):
  with pytest.raises(FileNotFoundError) as e:
    datasets.get_dataset(_config(str(tmp_path)), **DEVICES)
  message = str(e.value)
  for part in (
      str(tmp_path / 'organmnist3d.npz'),
      URL,
      'download=True',
      'data_dir',
      'MEDMNIST_ROOT',
  ):
    assert part in message


def test_corrupt_file_reports_md5_mismatch(tmp_path, fake_organ):
  path = tmp_path / 'organmnist3d.npz'
  path.write_bytes(fake_organ[0][:-500])
  with pytest.raises(ValueError) as e:
    datasets.get_dataset(_config(str(tmp_path)), **DEVICES)
  expected = medmnist3d.medmnist_info()['organmnist3d']['MD5']
  actual = hashlib.md5(fake_organ[0][:-500]).hexdigest()
  assert f'MD5 mismatch for {path}: expected {expected}, got {actual}' in str(
      e.value
  )
  assert 'delete' in str(e.value) and URL in str(e.value)


def test_size_64_uses_its_own_file(tmp_path, fake_organ, monkeypatch):
  monkeypatch.setitem(
      medmnist3d.medmnist_info()['organmnist3d'], 'MD5_64', '1' * 32
  )
  (tmp_path / 'organmnist3d.npz').write_bytes(fake_organ[0])
  with pytest.raises(FileNotFoundError, match='organmnist3d_64.npz'):
    datasets.get_dataset(_config(str(tmp_path), size=64), **DEVICES)


def test_download_then_read(tmp_path, fake_organ, monkeypatch):
  requested = []
  _serve(monkeypatch, fake_organ[0], requested)
  data_dir = tmp_path / 'new'
  ds = datasets.get_dataset(_config(str(data_dir), download=True), **DEVICES)
  assert requested == [URL]
  assert os.listdir(data_dir) == ['organmnist3d.npz']
  assert (data_dir / 'organmnist3d.npz').read_bytes() == fake_organ[0]
  assert ds.meta_data['num_train_examples'] == 9
  datasets.get_dataset(_config(str(data_dir), download=True), **DEVICES)
  assert requested == [URL]  # present and verified: not downloaded again


def test_download_with_wrong_md5_leaves_nothing(
    tmp_path, fake_organ, monkeypatch
):
  _serve(monkeypatch, fake_organ[0][:-10], [])
  with pytest.raises(ValueError) as e:
    datasets.get_dataset(_config(str(tmp_path / 'd'), download=True), **DEVICES)
  assert 'MD5 mismatch for the download of ' + URL in str(e.value)
  assert str(tmp_path / 'd' / 'organmnist3d.npz') in str(e.value)
  assert os.listdir(tmp_path / 'd') == []


def test_unreachable_network(tmp_path, fake_organ, monkeypatch):
  def urlopen(url, timeout=None):
    raise urllib.error.URLError('Name or service not known')

  monkeypatch.setattr(urllib.request, 'urlopen', urlopen)
  with pytest.raises(ConnectionError) as e:
    datasets.get_dataset(_config(str(tmp_path), download=True), **DEVICES)
  assert URL in str(e.value) and str(tmp_path / 'organmnist3d.npz') in str(
      e.value
  )
  assert 'network' in str(e.value) and os.listdir(tmp_path) == ['source.npz']


@pytest.mark.skipif(
    not os.path.exists(
        os.path.join(medmnist3d.SHARED_DATA_DIR, 'adrenalmnist3d.npz')
    ),
    reason=f'no real MedMNIST files in {medmnist3d.SHARED_DATA_DIR} (the shared data folder beside '
    'the checkout)',
)
def test_real_adrenalmnist3d_from_the_shared_folder(monkeypatch, tmp_path):
  """The real file is found without a data_dir, passes its MD5 and has MedMNIST v2's splits."""
  monkeypatch.setenv(
      'MEDMNIST_ROOT', str(tmp_path)
  )  # Empty: the shared folder is searched next.
  config = default_config.get_config().dataset_configs
  config.update(name='adrenalmnist3d', size=28)
  splits, meta = medmnist3d.load(config)
  assert meta['data_file'] == os.path.join(
      medmnist3d.SHARED_DATA_DIR, 'adrenalmnist3d.npz'
  )
  assert {k: len(v[1]) for k, v in splits.items()} == {
      'train': 1188,
      'validation': 98,
      'test': 298,
  }
  assert splits['train'][0].shape[1:] == (28, 28, 28, 1)
  assert set(np.unique(splits['test'][0][:20])) == {
      0,
      255,
  }  # Binary masks: no intensities.
  assert np.bincount(splits['test'][1]).tolist() == [229, 69]
