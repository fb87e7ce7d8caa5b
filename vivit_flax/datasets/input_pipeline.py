"""Host-side batch iterators over in-memory numpy arrays.

Examples are `[N, T, H, W, C]` arrays (a MedMNIST volume `[N, D, H, W]` enters as `[N, D, H, W, 1]`: its
depth axis D is the time axis T). Batches are dicts of numpy arrays shaped for pmap:
  'inputs'     float32 [local_devices, per_device_batch, T, H, W, C] in [0, 1]
               (augmentation.as_float_volumes: uint8 is scaled by 1/255 per batch, float data cast),
  'label'      float32 one-hot [local_devices, per_device_batch, num_classes],
  'batch_mask' float32 [local_devices, per_device_batch] (0 marks evaluation padding).

Training order: epoch e visits np.random.default_rng([seed, e]).permutation(N); global step s takes
perm[i*B:(i+1)*B] with i = s % steps_per_epoch (the last N % B examples of each epoch are dropped), and process
p takes the p-th contiguous 1/P of that global batch, so the global order does not depend on the process
count. Evaluation pads the split to a multiple of the global batch with masked, all-zero examples.

Each batch is a pure function of its step, so `num_workers` threads build the next batches ahead of use
(numpy releases the GIL while gathering and converting); the order of the batches never depends on them.
The trainer puts the batches on its local devices with `flax.jax_utils.prefetch_to_device`.
"""

import collections
import concurrent.futures
import functools
import itertools
import os

import numpy as np

from vivit_flax.config_checks import check_positive
from vivit_flax.datasets import augmentation as augmentation_lib


def per_device_batch_size(
    batch_size, process_count, local_device_count, key='batch_size'
):
  """The per-device batch size; raises ValueError, naming config.`key`, unless the global
  batch is positive and splits evenly over all devices."""
  devices = process_count * local_device_count
  check_positive(f'config.{key}', batch_size)
  if batch_size % devices:
    lower = max(devices, batch_size // devices * devices)
    raise ValueError(
        f'config.{key}={batch_size} is not divisible by the {devices} devices of this run; '
        f'use a multiple of {devices} such as {lower} or {lower + devices}. A global batch '
        'is split over the devices of all processes: it must be a multiple of '
        f'process_count * local_device_count = {process_count} * {local_device_count} = '
        f'{devices}.'
    )
  return batch_size // devices


def _check_process(process_index, process_count):
  if not 0 <= process_index < process_count:
    raise ValueError(
        f'process_index {process_index} is not in [0, {process_count}).'
    )


def default_num_workers():
  """Host threads building batches: half the CPU cores, at least 1 and at most 8."""
  return max(1, min(8, (os.cpu_count() or 2) // 2))


def _ordered_map(fn, items, num_workers):
  """Yields fn(item) for each item, in order, computing up to 2 * num_workers results ahead on threads."""
  pool = concurrent.futures.ThreadPoolExecutor(
      num_workers, thread_name_prefix='input_pipeline'
  )
  items = iter(items)
  try:
    pending = collections.deque(
        pool.submit(fn, item)
        for item in itertools.islice(items, 2 * num_workers)
    )
    while pending:
      result = pending.popleft().result()
      pending.extend(
          pool.submit(fn, item) for item in itertools.islice(items, 1)
      )
      yield result
  finally:
    pool.shutdown(wait=False, cancel_futures=True)


def _make_batch(images, labels, idx, valid, eye, local_device_count):
  """Gathers examples `idx` into a device-shaped batch; rows where `valid` is False become zero padding."""
  x = augmentation_lib.as_float_volumes(images[idx])
  onehot = eye[labels[idx]]
  mask = valid.astype(np.float32)
  if not valid.all():
    x[~valid] = 0
    onehot[~valid] = 0
  return _device_shaped(x, onehot, mask, local_device_count)


def _device_shaped(x, onehot, mask, local_device_count):
  """A batch dict with a leading local-device axis."""
  lead = (local_device_count, -1)
  return {
      'inputs': x.reshape(lead + x.shape[1:]),
      'label': onehot.reshape(lead + onehot.shape[1:]),
      'batch_mask': mask.reshape(lead),
  }


def train_iterator(
    images,
    labels,
    *,
    num_classes,
    batch_size,
    seed,
    start_step=0,
    process_index=0,
    process_count=1,
    local_device_count=1,
    num_workers=None,
    augmentation=None,
):
  """Infinite training batches of this process, from global step `start_step` on (see module doc).

  `augmentation`: optional `dataset_configs.augmentation` options (augmentation.VolumeAugmentation).
  """
  _check_process(process_index, process_count)
  per_device_batch_size(batch_size, process_count, local_device_count)
  n = len(labels)
  steps_per_epoch = n // batch_size
  if steps_per_epoch == 0:
    raise ValueError(
        f'The training split has {n} examples, fewer than one global batch of {batch_size}.'
    )
  if seed < 0 or start_step < 0:
    raise ValueError(
        f'seed ({seed}) and start_step ({start_step}) must be non-negative.'
    )
  per_process = batch_size // process_count
  offset = process_index * per_process
  eye = np.eye(num_classes, dtype=np.float32)
  valid = np.ones(per_process, bool)
  permutation = functools.lru_cache(maxsize=2)(
      lambda e: np.random.default_rng([seed, e]).permutation(n)
  )

  augment = augmentation_lib.VolumeAugmentation(
      augmentation, images, per_process
  )
  onehot = eye[labels]

  def batch(step):
    epoch, i = divmod(step, steps_per_epoch)
    global_idx = permutation(epoch)[i * batch_size : (i + 1) * batch_size]
    if not augment.enabled:
      return _make_batch(
          images,
          labels,
          global_idx[offset : offset + per_process],
          valid,
          eye,
          local_device_count,
      )
    x, y = augment(images, onehot, global_idx, offset, seed, step)
    return _device_shaped(x, y, valid.astype(np.float32), local_device_count)

  return _ordered_map(
      batch, itertools.count(start_step), num_workers or default_num_workers()
  )


def num_eval_steps(num_examples, batch_size):
  """Number of (padded) global evaluation batches covering `num_examples`."""
  return -(-num_examples // batch_size)


def eval_iterator(
    images,
    labels,
    *,
    num_classes,
    batch_size,
    process_index=0,
    process_count=1,
    local_device_count=1,
    num_workers=None,
):
  """Finite evaluation batches of this process; over all processes every example appears exactly once."""
  _check_process(process_index, process_count)
  per_device_batch_size(
      batch_size, process_count, local_device_count, 'eval_batch_size'
  )
  n = len(labels)
  per_process = batch_size // process_count
  eye = np.eye(num_classes, dtype=np.float32)

  def batch(step):
    positions = (
        np.arange(per_process) + step * batch_size + process_index * per_process
    )
    valid = positions < n
    return _make_batch(
        images,
        labels,
        np.minimum(positions, n - 1),
        valid,
        eye,
        local_device_count,
    )

  return _ordered_map(
      batch,
      range(num_eval_steps(n, batch_size)),
      num_workers or default_num_workers(),
  )
