"""Reading classification volumes/videos from a MedMNIST-layout `.npz` file (`npz_video`, `synthetic3d`).

File layout (a numpy `.npz`, with the keys of the MedMNIST files):

  train_images, val_images, test_images
      `[N, T, H, W]` or `[N, T, H, W, C]`. Axis 1 is time; for a volume it is the depth axis.
      uint8 (0..255, scaled by 1/255 per batch) or floating point, which must already lie in [0, 1].
  train_labels, val_labels, test_labels
      integer class ids, `[N]` or `[N, 1]`.
  label_names (optional)
      `[num_classes]` strings.

An optional sidecar `<path>.md5` (md5sum format: the first token is the hex digest) is checked when present;
for `synthetic3d` it is required. The loaders here return `(splits, meta)`: `splits` maps 'train' /
'validation' / 'test' to `(images [N, T, H, W, C], labels int32 [N])`, and `meta` holds num_classes,
label_names, task, dataset_name and data_file.
"""

import hashlib
import os
import zipfile
import zlib

from absl import logging
import numpy as np

SPLIT_KEYS = {'train': 'train', 'validation': 'val', 'test': 'test'}


def resolve_data_dir(data_dir=None):
  """The data folder: `data_dir`, else $MEDMNIST_ROOT, else ~/.medmnist."""
  return os.path.expanduser(
      data_dir or os.environ.get('MEDMNIST_ROOT') or '~/.medmnist'
  )


def md5_file(path):
  """Hex MD5 digest of the file at `path`."""
  digest = hashlib.md5()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      digest.update(chunk)
  return digest.hexdigest()


def check_md5(path, expected, fix):
  """Raises ValueError naming the file, both digests and `fix` unless the file's MD5 is `expected`."""
  actual = md5_file(path)
  if actual != expected.lower():
    raise ValueError(
        f'MD5 mismatch for {path}: expected {expected}, got {actual}. The file is corrupt, '
        f'truncated or not the expected version. Fix: {fix}'
    )


def sidecar_md5(path):
  """The digest recorded in `<path>.md5`, or None when there is no sidecar."""
  try:
    with open(path + '.md5') as f:
      return f.read().split()[0]
  except FileNotFoundError:
    return None
  except IndexError:
    raise ValueError(
        f'{path}.md5 is empty; delete it or write the MD5 of {path} into it.'
    ) from None


def _check_images(path, key, images):
  if images.ndim not in (4, 5):
    raise ValueError(
        f'{path}: {key} has shape {images.shape}; expected [N, T, H, W] or [N, T, H, W, C].'
    )
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(
        f'{path}: {key} has dtype {images.dtype}; expected uint8 or floating point in [0, 1].'
    )
  if images.size and (images.min() < 0 or images.max() > 1):
    raise ValueError(
        f'{path}: {key} is floating point with values in [{images.min()}, {images.max()}]; '
        'float images must already be scaled to [0, 1] (or store uint8 0..255).'
    )
  return images.astype(np.float32, copy=False)


def _check_labels(path, key, labels, n):
  if labels.ndim == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  if (
      labels.ndim != 1
      or labels.shape[0] != n
      or not np.issubdtype(labels.dtype, np.integer)
  ):
    raise ValueError(
        f'{path}: {key} has shape {labels.shape} and dtype {labels.dtype}; expected integer '
        f'class ids of shape [{n}] or [{n}, 1].'
    )
  if labels.size and labels.min() < 0:
    raise ValueError(f'{path}: {key} holds negative class ids.')
  return labels.astype(np.int32)


# Arrays an unlabeled-volume file may hold, in the order they are looked for.
UNLABELED_KEYS = ('images', 'train_images')


def read_unlabeled(
    path: str, shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
  """The volumes of an unlabeled `.npz` (its 'images' array, else a MedMNIST-layout file's
  'train_images'), [N, T, H, W, C], which must have the example `shape` and the `dtype` (uint8,
  or float32 in [0, 1]) of the dataset's."""
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'Unlabeled volume file {path} does not exist'
        ' (config.dataset_configs.unlabeled_files).'
    )
  with np.load(path, allow_pickle=False) as npz:
    key = next((k for k in UNLABELED_KEYS if k in npz.files), None)
    if key is None:
      raise ValueError(
          f'{path} holds none of the arrays {UNLABELED_KEYS} (found {npz.files}): store the'
          " volumes [N, T, H, W] as 'images'."
      )
    images = _check_images(path, key, npz[key])
  if images.ndim == 4:
    images = images[..., None]
  if images.shape[1:] != tuple(shape):
    raise ValueError(
        f'{path}: {key} holds volumes of shape {images.shape[1:]}, the dataset'
        f' {tuple(shape)}: resample them to the same size.'
    )
  if images.dtype != dtype:
    raise ValueError(
        f'{path}: {key} is {images.dtype}, the dataset {np.dtype(dtype)}: store the volumes'
        ' in the same type (uint8 0..255, or floating point in [0, 1]).'
    )
  return images


def read_npz(path):
  """Reads and validates a MedMNIST-layout `.npz`: returns (splits, label_names or None)."""
  keys = [
      f'{k}_{part}'
      for k in SPLIT_KEYS.values()
      for part in ('images', 'labels')
  ]
  try:
    with np.load(path, allow_pickle=False) as npz:
      missing = [k for k in keys if k not in npz.files]
      if missing:
        raise ValueError(
            f'{path} is not a MedMNIST-layout .npz: missing keys {missing} (found {npz.files}).'
        )
      arrays = {k: npz[k] for k in keys}
      label_names = (
          [str(s) for s in npz['label_names']]
          if 'label_names' in npz.files
          else None
      )
  except (zipfile.BadZipFile, EOFError, OSError, zlib.error, KeyError) as e:
    if isinstance(e, FileNotFoundError):
      raise
    raise ValueError(
        f'{path} is corrupt or truncated and cannot be read as .npz ({type(e).__name__}: {e}). '
        'Delete it and re-download or re-generate it.'
    ) from e
  splits = {}
  for split, key in SPLIT_KEYS.items():
    images = _check_images(path, f'{key}_images', arrays[f'{key}_images'])
    if images.ndim == 4:
      images = images[..., None]
    splits[split] = (
        images,
        _check_labels(
            path, f'{key}_labels', arrays[f'{key}_labels'], len(images)
        ),
    )
  shapes = {s: im.shape[1:] for s, (im, _) in splits.items()}
  if len(set(shapes.values())) != 1:
    raise ValueError(
        f'{path}: the splits have different example shapes {shapes}.'
    )
  return splits, label_names


def _num_classes(path, splits, label_names):
  top = (
      max(
          (int(lab.max()) for _, lab in splits.values() if lab.size), default=-1
      )
      + 1
  )
  if label_names is None:
    return top
  if top > len(label_names):
    raise ValueError(
        f'{path}: class id {top - 1} but only {len(label_names)} label_names.'
    )
  return len(label_names)


def load(dataset_configs):
  """Loads the user `.npz` at `dataset_configs.path` (sidecar MD5 checked when present)."""
  path = dataset_configs.path
  if not path:
    raise ValueError(
        'dataset_name=npz_video needs --config.dataset_configs.path=/path/to/file.npz.'
    )
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'npz_video file {path} does not exist (config.dataset_configs.path).'
    )
  expected = sidecar_md5(path)
  if expected is not None:
    check_md5(
        path,
        expected,
        f'replace {path} with the intended file or update {path}.md5.',
    )
  splits, label_names = read_npz(path)
  num_classes = _num_classes(path, splits, label_names)
  meta = dict(
      num_classes=num_classes,
      label_names=label_names or [str(i) for i in range(num_classes)],
      task='multi-class',
      dataset_name='npz_video',
      data_file=path,
  )
  return splits, meta


def load_synthetic3d(dataset_configs):
  """Loads synthetic3d (`path`, default `<data_dir>/synthetic3d.npz`), generating it first when absent.

  Generation uses dataset_configs.seed and num_train / num_val / num_test (default
  OrganMNIST3D's sizes). An existing file is read as it is, but split sizes that the config sets must match.
  """
  # Imported here so that `python -m vivit_flax.datasets.synthetic` does not find it already imported.
  from vivit_flax.datasets import synthetic  # pylint: disable=g-import-not-at-top

  path = dataset_configs.path or os.path.join(
      resolve_data_dir(dataset_configs.data_dir), synthetic.FILE_NAME
  )
  path = os.path.expanduser(path)
  asked = {
      split: dataset_configs[f'num_{split}'] for split in synthetic.SPLIT_SIZES
  }
  asked = {split: n for split, n in asked.items() if n is not None}
  if not os.path.exists(path):
    logging.info('Generating the synthetic3d set at %s.', path)
    sizes = {
        f'num_{split}': asked.get(split, n)
        for split, n in synthetic.SPLIT_SIZES.items()
    }
    synthetic.write(path, dataset_configs.seed, **sizes)
  expected = sidecar_md5(path)
  if expected is None:
    raise FileNotFoundError(
        f'{path}.md5 is missing. Delete {path} so that it is re-generated, or run '
        f'`python -m vivit_flax.datasets.synthetic --out {os.path.dirname(path)}`.'
    )
  check_md5(
      path,
      expected,
      f'delete {path} and {path}.md5 so that the set is re-generated.',
  )
  splits, _ = read_npz(path)
  found = {split: len(splits[name][1]) for name, split in SPLIT_KEYS.items()}
  if any(n != found[split] for split, n in asked.items()):
    raise ValueError(
        f'{path} holds {found} examples per split but the config asks for {asked}. Delete '
        f'{path} and {path}.md5 to re-generate it, or set dataset_configs.path (or data_dir) to '
        'another file.'
    )
  meta = dict(
      num_classes=synthetic.NUM_CLASSES,
      label_names=list(synthetic.LABEL_NAMES),
      task='multi-class',
      dataset_name='synthetic3d',
      data_file=path,
  )
  return splits, meta
