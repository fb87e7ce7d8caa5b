"""Volume augmentation: label-preserving transforms, mixing, and draws that depend only on the step."""

import numpy as np
import pytest

from vivit_flax import default_config
from vivit_flax.datasets import augmentation, input_pipeline


def _options(**kw):
  """config.dataset_configs.augmentation: the defaults, with `kw` set."""
  options = default_config.get_config().dataset_configs.augmentation
  options.update(kw)
  return options


def _volumes(n=8, size=6, binary=True, seed=0):
  rng = np.random.default_rng(seed)
  if binary:
    return (rng.random((n, size, size, size, 1)) < 0.3).astype(np.uint8) * 255
  return rng.integers(0, 256, (n, size, size, size, 1), dtype=np.uint8)


def _run(options, images, step=3, seed=5):
  labels = np.arange(len(images)) % 2
  onehot = np.eye(2, dtype=np.float32)[labels]
  augment = augmentation.VolumeAugmentation(options, images, len(images))
  return augment(images, onehot, np.arange(len(images)), 0, seed, step)


def test_flips_and_turns_only_permute_voxels():
  images = _volumes()
  x, y = _run(
      _options(flip_axes=(0, 1, 2), rotate_planes=((1, 2), (0, 1))), images
  )
  original = images.astype(np.float32) / 255
  for a, b in zip(
      x, original
  ):  # Same multiset of voxels, and some example really moved.
    np.testing.assert_array_equal(np.sort(a.ravel()), np.sort(b.ravel()))
  assert not np.array_equal(x, original)
  np.testing.assert_array_equal(y, np.eye(2)[np.arange(8) % 2])


def test_each_flip_and_turn_is_one_of_the_cube_symmetries_drawn():
  images = _volumes(n=1)
  volume = images[0].astype(np.float32) / 255
  candidates = [
      np.rot90(np.flip(volume, 2) if f else volume, k, (0, 1))
      for f in (0, 1)
      for k in range(4)
  ]
  seen = set()
  for step in range(40):
    x, _ = _run(
        _options(flip_axes=(2,), rotate_planes=((0, 1),)), images, step=step
    )
    matches = [i for i, c in enumerate(candidates) if np.array_equal(x[0], c)]
    assert matches
    seen.add(matches[0])
  assert len(seen) == 8


def test_shift_translates_with_zero_fill():
  images = np.zeros((1, 6, 6, 6, 1), np.uint8)
  images[0, 2, 3, 1] = 255
  for step in range(20):
    x, _ = _run(_options(max_shift=1), images, step=step)
    ((t, h, w, _),) = np.argwhere(x[0] > 0)
    assert abs(t - 2) <= 1 and abs(h - 3) <= 1 and abs(w - 1) <= 1
    assert x.sum() == 1


@pytest.mark.parametrize('axis', [0, 1, 2])
def test_rotation_by_a_right_angle_is_a_quarter_turn(axis):
  volume = np.random.default_rng(0).random((5, 5, 5, 2)).astype(np.float32)
  angles = np.zeros(3)
  angles[axis] = 90
  rotated = augmentation._rotate(volume, angles, None)
  plane = tuple(a for a in (0, 1, 2) if a != axis)
  turns = [np.rot90(volume, k, plane) for k in (1, 3)]
  assert any(np.allclose(rotated, turn, atol=1e-5) for turn in turns)


def test_small_rotations_tilt_a_mask_and_keep_its_two_values():
  images = np.zeros((1, 12, 12, 12, 1), np.uint8)
  images[0, 2:10, 5:7, 5:7] = 255  # A rod along the depth axis.
  options = _options(max_rotation=15.0)
  moved = 0
  for step in range(10):
    x, _ = _run(options, images, step=step)
    assert set(np.unique(x)) <= {0.0, 1.0}
    # Its volume, up to the thresholding's rounding.
    assert abs(x.sum() - 32) <= 8
    moved += not np.array_equal(x[0], images[0] / np.float32(255))
  assert moved >= 8


def test_rotation_interpolates_volumes_with_intensities():
  grey = _volumes(n=2, size=8, binary=False)
  x, _ = _run(_options(max_rotation=10.0), grey)
  assert x.min() >= 0 and x.max() <= 1
  assert len(np.unique(x)) > 256  # Interpolated between the 256 levels.
  centre = (slice(None), slice(3, 5), slice(3, 5), slice(3, 5))
  np.testing.assert_allclose(
      x[centre].mean(), (grey / np.float32(255))[centre].mean(), atol=0.15
  )


def test_intensity_changes_only_volumes_with_intensities():
  binary, grey = _volumes(binary=True), _volumes(binary=False)
  x, _ = _run(_options(intensity=0.3), binary)
  np.testing.assert_array_equal(x, binary / np.float32(255))
  x, _ = _run(_options(intensity=0.3), grey)
  assert not np.allclose(x, grey / np.float32(255))
  assert x.min() >= 0 and x.max() <= 1


@pytest.mark.parametrize('kind', ['mixup_alpha', 'cutmix_alpha'])
def test_mixing_blends_volumes_and_labels_alike(kind):
  images = _volumes(binary=False)
  x, y = _run(_options(**{kind: 1.0}), images)
  np.testing.assert_allclose(y.sum(-1), 1, rtol=1e-6)
  original = images.astype(np.float32) / 255
  partner = np.roll(original, -1, axis=0)
  lam = y[0, 0]  # Example 0 is of class 0, its partner (example 1) of class 1.
  if kind == 'mixup_alpha':
    np.testing.assert_allclose(
        x, lam * original + (1 - lam) * partner, atol=1e-6
    )
  else:
    from_self = np.isclose(x, original) & ~np.isclose(original, partner)
    from_partner = np.isclose(x, partner) & ~np.isclose(original, partner)
    fraction = from_self[0].sum() / (from_self[0].sum() + from_partner[0].sum())
    assert abs(fraction - lam) < 0.1


def test_batches_depend_on_the_step_not_on_the_process_count_or_history():
  images = _volumes(n=24, binary=False)
  labels = np.arange(24) % 3
  options = _options(
      flip_axes=(0, 1, 2),
      rotate_planes=((1, 2),),
      max_rotation=10.0,
      max_shift=1,
      intensity=0.1,
      mixup_alpha=0.4,
      cutmix_alpha=1.0,
  )

  def batches(start_step, process_index=0, process_count=1):
    iterator = input_pipeline.train_iterator(
        images,
        labels,
        num_classes=3,
        batch_size=8,
        seed=1,
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
        local_device_count=2,
        augmentation=options,
    )
    return [next(iterator) for _ in range(4)]

  whole = batches(0)
  resumed = batches(2)
  for a, b in zip(whole[2:], resumed):
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
    np.testing.assert_array_equal(a['label'], b['label'])
  halves = [batches(0, p, 2) for p in (0, 1)]
  for step in range(4):
    for key in ('inputs', 'label'):
      joined = np.concatenate(
          [
              halves[p][step][key].reshape((4,) + whole[0][key].shape[2:])
              for p in (0, 1)
          ]
      )
      np.testing.assert_array_equal(
          joined, whole[step][key].reshape(joined.shape)
      )


def test_bad_axes_are_refused_with_the_fix():
  images = _volumes()
  with pytest.raises(ValueError, match='use 0, 1 or 2'):
    augmentation.VolumeAugmentation(_options(flip_axes=(3,)), images, 8)
  with pytest.raises(ValueError, match='two different axes'):
    augmentation.VolumeAugmentation(
        _options(rotate_planes=((1, 1),)), images, 8
    )
  with pytest.raises(ValueError, match='largest tilt in degrees'):
    augmentation.VolumeAugmentation(_options(max_rotation=-10.0), images, 8)


def test_as_float_volumes_scales_uint8_to_unit_interval_and_casts_floats():
  levels = np.arange(256, dtype=np.uint8).reshape(4, 4, 4, 4)
  scaled = augmentation.as_float_volumes(levels)
  assert scaled.dtype == np.float32 and scaled.shape == levels.shape
  np.testing.assert_allclose(scaled, levels / 255.0, rtol=0, atol=1e-7)
  assert scaled.min() == 0.0 and scaled.max() == 1.0
  floats = np.random.default_rng(0).random((2, 3, 3, 3))
  cast = augmentation.as_float_volumes(floats)
  assert cast.dtype == np.float32
  np.testing.assert_array_equal(cast, floats.astype(np.float32))
  assert not np.shares_memory(
      augmentation.as_float_volumes(cast), cast
  )  # A new array: callers zero padded rows in place.
