"""The six MedMNIST 3D sets (OrganMNIST3D, NoduleMNIST3D, AdrenalMNIST3D, FractureMNIST3D, VesselMNIST3D,
SynapseMNIST3D) read from the official `.npz` files, with metadata from `medmnist.info.INFO`.

Files live in the data folder (config.dataset_configs.data_dir, else $MEDMNIST_ROOT, else ~/.medmnist) as
`<name>.npz` (size 28) or `<name>_64.npz` (size 64), and are MD5-checked on every load. A missing file is
downloaded from the URL in INFO when config.dataset_configs.download is True. Volumes `[N, D, H, W]` become
`[N, D, H, W, 1]` with the depth axis D as time; labels `[N, 1]` become int32 `[N]`.
"""

import contextlib
import io
import os
import shutil
import tempfile
import urllib.request

from absl import logging

from vivit_flax.datasets import npz_video

NAMES = ('organmnist3d', 'nodulemnist3d', 'adrenalmnist3d', 'fracturemnist3d', 'vesselmnist3d',
         'synapsemnist3d')
_DOWNLOAD_TIMEOUT_S = 60


def medmnist_info():
  """medmnist.info.INFO, imported without the package's torch warning on stdout."""
  with contextlib.redirect_stdout(io.StringIO()):
    from medmnist import info  # pylint: disable=g-import-not-at-top
  return info.INFO


def file_info(name, size):
  """(file name, URL, MD5) of set `name` at `size` (28 or 64)."""
  if name not in NAMES:
    raise ValueError(f'Unknown MedMNIST 3D set {name!r}; choose one of {NAMES}.')
  info = medmnist_info()[name]
  suffix = '' if size == 28 else f'_{size}'
  if f'url{suffix}' not in info:
    raise ValueError(f'{name} has no size {size}; available sizes: 28' + (', 64' if 'url_64' in info else '') + '.')
  return f'{name}{suffix}.npz', info[f'url{suffix}'], info[f'MD5{suffix}']


def download(url, path, md5):
  """Downloads `url` to `path` through a temporary file, renamed into place once its MD5 is `md5`."""
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  logging.info('Downloading %s to %s.', url, path)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + '.', suffix='.part')
  try:
    with os.fdopen(fd, 'wb') as f:
      try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
          shutil.copyfileobj(response, f, 1 << 20)
      except OSError as e:  # urllib.error.URLError, socket timeouts, connection resets
        raise ConnectionError(f'Could not download {url} ({e}); is the network reachable? Otherwise fetch '
                              f'the file by other means and put it at {path}.') from e
    actual = npz_video.md5_file(tmp)
    if actual != md5.lower():
      raise ValueError(f'MD5 mismatch for the download of {url} to {path}: expected {md5}, got {actual}. '
                       f'The download is corrupt or incomplete (nothing was written); try again, or fetch the '
                       f'file by other means and put it at {path}.')
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def load(dataset_configs):
  """Loads MedMNIST 3D set dataset_configs.name at dataset_configs.size (default 28)."""
  name, size = dataset_configs.get('name'), dataset_configs.get('size', 28)
  file_name, url, md5 = file_info(name, size)
  data_dir = npz_video.resolve_data_dir(dataset_configs.get('data_dir'))
  path = os.path.join(data_dir, file_name)
  if not os.path.exists(path):
    if not dataset_configs.get('download', False):
      raise FileNotFoundError(
          f'{path} does not exist. Download {url} and save it as {path}, or pass '
          '--config.dataset_configs.download=True to fetch it automatically. The folder is '
          '--config.dataset_configs.data_dir, else $MEDMNIST_ROOT, else ~/.medmnist.')
    download(url, path, md5)
  npz_video.check_md5(path, md5, f'delete {path} and download it again from {url} '
                      '(or pass --config.dataset_configs.download=True after deleting it).')
  splits, _ = npz_video.read_npz(path)
  info = medmnist_info()[name]
  label_names = [info['label'][k] for k in sorted(info['label'], key=int)]
  meta = dict(num_classes=len(label_names), label_names=label_names, task=info['task'],
              dataset_name=name, data_file=path)
  return splits, meta
