"""The six MedMNIST 3D sets (OrganMNIST3D, NoduleMNIST3D, AdrenalMNIST3D, FractureMNIST3D, VesselMNIST3D,
SynapseMNIST3D) read from the official `.npz` files, with metadata from `medmnist.info.INFO`.

Files live in the data folder (config.dataset_configs.data_dir, else $MEDMNIST_ROOT, else ~/.medmnist, else
a `shared/medmnist` folder beside the checkout) as
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

NAMES = (
    'organmnist3d',
    'nodulemnist3d',
    'adrenalmnist3d',
    'fracturemnist3d',
    'vesselmnist3d',
    'synapsemnist3d',
)
_DOWNLOAD_TIMEOUT_S = 60


def medmnist_info():
  """medmnist.info.INFO, imported without the package's torch warning on stdout."""
  with contextlib.redirect_stdout(io.StringIO()):
    from medmnist import info  # pylint: disable=g-import-not-at-top
  return info.INFO


def file_info(name, size):
  """(file name, URL, MD5) of set `name` at `size` (28 or 64)."""
  if name not in NAMES:
    raise ValueError(
        f'Unknown MedMNIST 3D set {name!r}; choose one of {NAMES}.'
    )
  info = medmnist_info()[name]
  suffix = '' if size == 28 else f'_{size}'
  if f'url{suffix}' not in info:
    raise ValueError(
        f'{name} has no size {size}; available sizes: 28'
        + (', 64' if 'url_64' in info else '')
        + '.'
    )
  return f'{name}{suffix}.npz', info[f'url{suffix}'], info[f'MD5{suffix}']


# A read-only copy of the files kept beside a checkout of this repository (a team's shared data
# folder), searched after the usual places when no data_dir is given.
SHARED_DATA_DIR = os.path.join(
    os.path.dirname(
        os.path.dirname(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        )
    ),
    'shared',
    'medmnist',
)


def data_path(dataset_configs, file_name):
  """Where `file_name` is read from: in dataset_configs.data_dir when set; otherwise the first of
  $MEDMNIST_ROOT, ~/.medmnist and SHARED_DATA_DIR that holds it (the first of them when none
  does: where a download goes, and what a missing-file error names)."""
  primary = os.path.join(
      npz_video.resolve_data_dir(dataset_configs.data_dir), file_name
  )
  if dataset_configs.data_dir or os.path.exists(primary):
    return primary
  shared = os.path.join(SHARED_DATA_DIR, file_name)
  if os.path.exists(shared):
    logging.info(
        'Reading %s from the shared data folder %s.', file_name, SHARED_DATA_DIR
    )
    return shared
  return primary


def download(url, path, md5):
  """Downloads `url` to `path` through a temporary file, renamed into place once its MD5 is `md5`."""
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  logging.info('Downloading %s to %s.', url, path)
  fd, tmp = tempfile.mkstemp(
      dir=folder, prefix=os.path.basename(path) + '.', suffix='.part'
  )
  try:
    with os.fdopen(fd, 'wb') as f:
      try:
        with urllib.request.urlopen(
            url, timeout=_DOWNLOAD_TIMEOUT_S
        ) as response:
          shutil.copyfileobj(response, f, 1 << 20)
      except (
          OSError
      ) as e:  # urllib.error.URLError, socket timeouts, connection resets
        raise ConnectionError(
            f'Could not download {url} ({e}); is the network reachable? Otherwise fetch '
            f'the file by other means and put it at {path}.'
        ) from e
    actual = npz_video.md5_file(tmp)
    if actual != md5.lower():
      raise ValueError(
          f'MD5 mismatch for the download of {url} to {path}: expected {md5}, got {actual}. '
          f'The download is corrupt or incomplete (nothing was written); try again, or fetch the '
          f'file by other means and put it at {path}.'
      )
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def load(dataset_configs):
  """Loads MedMNIST 3D set dataset_configs.name at dataset_configs.size (config.dataset_configs,
  with default_config's defaults)."""
  name, size = dataset_configs.name, dataset_configs.size
  file_name, url, md5 = file_info(name, size)
  path = data_path(dataset_configs, file_name)
  if not os.path.exists(path):
    if not dataset_configs.download:
      raise FileNotFoundError(
          f'{path} does not exist. Download {url} and save it as {path}, or pass '
          '--config.dataset_configs.download=True to fetch it automatically. The folder is '
          '--config.dataset_configs.data_dir, else $MEDMNIST_ROOT, else ~/.medmnist.'
      )
    download(url, path, md5)
  npz_video.check_md5(
      path,
      md5,
      f'delete {path} and download it again from {url} '
      '(or pass --config.dataset_configs.download=True after deleting it).',
  )
  splits, _ = npz_video.read_npz(path)
  info = medmnist_info()[name]
  label_names = [info['label'][k] for k in sorted(info['label'], key=int)]
  meta = dict(
      num_classes=len(label_names),
      label_names=label_names,
      task=info['task'],
      dataset_name=name,
      data_file=path,
  )
  return splits, meta
