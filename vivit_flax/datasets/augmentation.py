"""Random augmentation of training batches of volumes, on the host, in numpy.

Every draw comes from `np.random.default_rng([seed, step, ...])` for the whole global batch, and each
process applies the draws of its own examples: a batch is a pure function of its step (a resumed run
sees exactly the batches of an uninterrupted one) and does not depend on the process count.

Volumes are `[B, T, H, W, C]` (for MedMNIST: depth, height, width); `axes` below count over (T, H, W)
as 0, 1, 2. Options, from `config.dataset_configs.augmentation`:
  flip_axes      flip along each of these axes with probability 1/2;
  rotate_planes  pairs of axes (of equal size) in whose plane the volume turns by k * 90 degrees, k
                 uniform in {0, 1, 2, 3};
  max_rotation   rotate about the volume's centre by an angle in [-max_rotation, max_rotation] degrees
                 in each of the three planes (linear interpolation, zero fill; a binary mask is
                 thresholded back to its two values): the small tilts of a patient in the scanner,
                 unlike rotate_planes' quarter turns, which no registered test volume shows;
  max_shift      translate by an integer in [-max_shift, max_shift] voxels along each axis, filling
                 with zeros (what a crop of the zero-padded volume gives);
  intensity      for volumes with intensities only (a binary mask has none): multiply by a factor in
                 [1 - intensity, 1 + intensity] and add an offset in [-intensity, intensity], clipped
                 to [0, 1];
  mixup_alpha    mixup (Zhang et al. 2018): each example is blended with a partner of the same global
                 batch, with one weight lambda ~ Beta(alpha, alpha) per batch, labels alike;
  cutmix_alpha   CutMix in 3D (Yun et al. 2019): a box of the partner replaces a box of the example,
                 the labels mixed by its volume fraction. With both set, each batch picks one of the two.
"""

from __future__ import annotations

import ml_collections
import numpy as np
from scipy import ndimage
from scipy.spatial import transform

_SALT = 0xA46  # Keeps augmentation draws apart from the draws of the training order.


def as_float_volumes(volumes: np.ndarray) -> np.ndarray:
  """`volumes` as a new float32 array in [0, 1]: uint8 scaled by 1/255, float data only cast.

  The one scaling of the project's inputs (training and evaluation batches, augmentation,
  inference); it lives here, the lowest datasets module, because input_pipeline imports this one.
  """
  if volumes.dtype == np.uint8:
    return np.multiply(volumes, np.float32(1 / 255), dtype=np.float32)
  return volumes.astype(np.float32)


def _binary_values(images: np.ndarray) -> tuple[float, float] | None:
  """The two values, as floats in [0, 1], of examples that hold only two (a segmentation mask, no
  intensities); None for volumes with intensities."""
  values = np.unique(images[: min(len(images), 64)])
  if values.size > 2:
    return None
  low, high = as_float_volumes(values[[0, -1]])
  return float(low), float(high)


class VolumeAugmentation:
  """Draws and applies the augmentation of one global training batch (see module docstring)."""

  def __init__(
      self,
      options: ml_collections.ConfigDict | None,
      images: np.ndarray,
      per_process: int,
  ):
    options = options or ml_collections.ConfigDict()
    self.per_process = per_process
    self.flip_axes = tuple(options.get('flip_axes') or ())
    self.rotate_planes = tuple(
        tuple(plane) for plane in (options.get('rotate_planes') or ())
    )
    self.max_rotation = float(options.get('max_rotation') or 0)
    self.max_shift = int(options.get('max_shift') or 0)
    self.binary_values = _binary_values(images)
    self.intensity = (
        float(options.get('intensity') or 0)
        if self.binary_values is None
        else 0.0
    )
    self.mixup_alpha = float(options.get('mixup_alpha') or 0)
    self.cutmix_alpha = float(options.get('cutmix_alpha') or 0)
    if not 0 <= self.max_rotation <= 180:
      raise ValueError(
          f'dataset_configs.augmentation.max_rotation is {self.max_rotation}: give the largest '
          'tilt in degrees, from 0 (off) to 180.'
      )
    volume_shape = images.shape[1:4]
    for axis in self.flip_axes + sum(self.rotate_planes, ()):
      if axis not in (0, 1, 2):
        raise ValueError(
            f'Augmentation axis {axis} is not a volume axis: use 0, 1 or 2 (depth, '
            'height, width) in dataset_configs.augmentation.flip_axes/rotate_planes.'
        )
    for plane in self.rotate_planes:
      if (
          len(plane) != 2
          or plane[0] == plane[1]
          or (volume_shape[plane[0]] != volume_shape[plane[1]])
      ):
        raise ValueError(
            f'dataset_configs.augmentation.rotate_planes entry {plane} must be two '
            f'different axes of equal size (volumes are {volume_shape}).'
        )

  @property
  def enabled(self) -> bool:
    return bool(
        self.flip_axes
        or self.rotate_planes
        or self.max_rotation
        or self.max_shift
        or self.intensity
        or self.mixup_alpha
        or self.cutmix_alpha
    )

  def __call__(self, images, onehot, global_idx, start, seed, step):
    """This process's examples of the global batch `global_idx` (positions `start` to
    `start + per_process`), augmented with the draws of training step `step`.

    `images` [N, T, H, W, C] (uint8 or float) and `onehot` [N, K] hold the whole split; returns float32
    volumes in [0, 1] and float32 labels (mixed where mixup or CutMix mixed the volumes).
    """
    rng = np.random.default_rng([seed, step, _SALT])
    size = len(global_idx)
    draws = {
        'flip': rng.random((size, len(self.flip_axes))) < 0.5,
        'turns': rng.integers(0, 4, (size, len(self.rotate_planes))),
        'shift': rng.integers(-self.max_shift, self.max_shift + 1, (size, 3)),
        'gain': rng.uniform(1 - self.intensity, 1 + self.intensity, size),
        'offset': rng.uniform(-self.intensity, self.intensity, size),
        # No columns (and no draws, so the other draws are unchanged) without rotation.
        'angles': rng.uniform(
            -self.max_rotation,
            self.max_rotation,
            (size, 3 * bool(self.max_rotation)),
        ),
    }
    mix = self._mix_choice(rng)

    def views(positions):
      return np.stack(
          [
              self._transform(
                  as_float_volumes(images[global_idx[j]]),
                  {k: v[j] for k, v in draws.items()},
              )
              for j in positions
          ]
      )

    positions = np.arange(start, start + self.per_process)
    x, y = views(positions), onehot[global_idx[positions]]
    if mix is None:
      return x, y
    kind, lam = mix
    partners = (
        positions + 1
    ) % size  # Each example's neighbour in the (shuffled) global batch.
    x_partner, y_partner = views(partners), onehot[global_idx[partners]]
    if kind == 'mixup':
      x = lam * x + (1 - lam) * x_partner
    else:
      box = (slice(None),) + _cutmix_box(rng, x.shape[1:4], lam)
      x[box] = x_partner[box]
      lam = 1 - np.prod([s.stop - s.start for s in box[1:]]) / np.prod(
          x.shape[1:4]
      )
    return x.astype(np.float32), (lam * y + (1 - lam) * y_partner).astype(
        np.float32
    )

  def _mix_choice(self, rng):
    kinds = [
        (k, a)
        for k, a in (('mixup', self.mixup_alpha), ('cutmix', self.cutmix_alpha))
        if a
    ]
    if not kinds:
      return None
    kind, alpha = kinds[rng.integers(len(kinds))]
    return kind, float(rng.beta(alpha, alpha))

  def _transform(self, volume, draw):
    """One example [T, H, W, C]: flips, quarter turns, rotation, shift, intensity."""
    for axis, flip in zip(self.flip_axes, draw['flip']):
      if flip:
        volume = np.flip(volume, axis)
    for plane, turns in zip(self.rotate_planes, draw['turns']):
      volume = np.rot90(volume, turns, plane)
    if self.max_rotation:
      volume = _rotate(volume, draw['angles'], self.binary_values)
    if self.max_shift:
      volume = _shift(volume, draw['shift'])
    if self.intensity:
      volume = np.clip(volume * draw['gain'] + draw['offset'], 0.0, 1.0)
    return np.ascontiguousarray(volume, np.float32)


def _rotate(volume, angles, binary_values):
  """`volume` rotated about its centre by `angles` (degrees) about its first three axes in turn,
  zero-filled; with `binary_values` (low, high), thresholded back to them halfway.
  """
  matrix = transform.Rotation.from_euler(
      'xyz', angles, degrees=True
  ).as_matrix()
  centre = (np.array(volume.shape[:3]) - 1) / 2
  out = np.stack(
      [
          ndimage.affine_transform(
              volume[..., c],
              matrix,
              offset=centre - matrix @ centre,
              order=1,
              mode='grid-constant',  # The zero-padded volume, interpolated.
          )
          for c in range(volume.shape[-1])
      ],
      axis=-1,
  )
  if binary_values is not None:
    low, high = binary_values
    out = np.where(out >= (low + high) / 2, high, low)
  return out


def _shift(volume, shift):
  """`volume` translated by `shift` voxels along its first three axes, zero-filled."""
  out = np.zeros_like(volume)
  src, dst = [], []
  for s, n in zip(shift, volume.shape[:3]):
    src.append(slice(max(-s, 0), n - max(s, 0)))
    dst.append(slice(max(s, 0), n - max(-s, 0)))
  out[tuple(dst)] = volume[tuple(src)]
  return out


def _cutmix_box(rng, shape, lam):
  """A box of about (1 - lam) of the volume `shape`, centred uniformly, clipped to the volume."""
  side = (1 - lam) ** (1 / 3)
  box = []
  for n in shape:
    length = int(round(n * side))
    centre = rng.integers(n)
    lo = int(np.clip(centre - length // 2, 0, n))
    box.append(slice(lo, int(np.clip(lo + length, 0, n))))
  return tuple(box)
