"""Host batch iterators: eval counts each example once, training order is process-count free and resumable."""

import itertools
import threading
import time

import jax
import numpy as np
import pytest
from flax import jax_utils

from vivit_flax import model
from vivit_flax.datasets import input_pipeline

NUM_CLASSES = 5


def _data(n, seed=0):
  """uint8 volumes [n, 2, 3, 3, 1] whose first voxel is the example id, and random labels."""
  images = np.random.default_rng(seed).integers(
      0, 256, (n, 2, 3, 3, 1), dtype=np.uint8
  )
  images[:, 0, 0, 0, 0] = np.arange(n)
  return images, np.random.default_rng(seed + 1).integers(
      0, NUM_CLASSES, n
  ).astype(np.int32)


def _ids(batch):
  return np.rint(batch['inputs'][..., 0, 0, 0, 0] * 255).astype(int).reshape(-1)


def _global_train_steps(
    images,
    labels,
    steps,
    start_step=0,
    *,
    process_count,
    local_device_count,
    batch_size=12,
    seed=7,
):
  """Example ids of each global step, concatenating the processes' slices in process order."""
  per_process = [
      list(
          itertools.islice(
              input_pipeline.train_iterator(
                  images,
                  labels,
                  num_classes=NUM_CLASSES,
                  batch_size=batch_size,
                  seed=seed,
                  start_step=start_step,
                  process_index=p,
                  process_count=process_count,
                  local_device_count=local_device_count,
              ),
              steps,
          )
      )
      for p in range(process_count)
  ]
  return [
      np.concatenate([_ids(per_process[p][s]) for p in range(process_count)])
      for s in range(steps)
  ]


@pytest.mark.parametrize('per_device', [2, 5])
@pytest.mark.parametrize(
    'process_count,local_device_count', [(1, 1), (1, 3), (2, 1), (3, 2), (4, 1)]
)
def test_eval_counts_every_example_exactly_once(
    process_count, local_device_count, per_device
):
  images, labels = _data(37)  # 37 is not a multiple of any batch size used here
  batch_size = per_device * process_count * local_device_count
  seen_ids, label_counts, steps = [], np.zeros(NUM_CLASSES), set()
  for p in range(process_count):
    batches = list(
        input_pipeline.eval_iterator(
            images,
            labels,
            num_classes=NUM_CLASSES,
            batch_size=batch_size,
            process_index=p,
            process_count=process_count,
            local_device_count=local_device_count,
        )
    )
    steps.add(len(batches))
    for b in batches:
      assert b['inputs'].shape == (local_device_count, per_device, 2, 3, 3, 1)
      assert b['label'].shape == (local_device_count, per_device, NUM_CLASSES)
      assert b['batch_mask'].shape == (local_device_count, per_device)
      assert all(v.dtype == np.float32 for v in b.values())
      mask = b['batch_mask'].reshape(-1).astype(bool)
      seen_ids.append(_ids(b)[mask])
      label_counts += (
          (b['label'] * b['batch_mask'][..., None])
          .reshape(-1, NUM_CLASSES)
          .sum(0)
      )
      assert (
          not b['inputs'].reshape(len(mask), -1)[~mask].any()
          and not b['label'].reshape(len(mask), -1)[~mask].any()
      )
  assert (
      len(steps) == 1
  )  # every process runs the same number of (collective) eval steps
  np.testing.assert_array_equal(
      np.sort(np.concatenate(seen_ids)), np.arange(37)
  )
  np.testing.assert_array_equal(
      label_counts, np.bincount(labels, minlength=NUM_CLASSES)
  )


def test_eval_values_are_scaled_and_one_hot():
  images, labels = _data(5)
  b = next(
      input_pipeline.eval_iterator(
          images, labels, num_classes=NUM_CLASSES, batch_size=4
      )
  )
  np.testing.assert_allclose(b['inputs'][0], images[:4] / 255, rtol=1e-6)
  np.testing.assert_array_equal(b['label'][0], np.eye(NUM_CLASSES)[labels[:4]])
  floats = images.astype(np.float64) / 255
  b = next(
      input_pipeline.eval_iterator(
          floats, labels, num_classes=NUM_CLASSES, batch_size=4
      )
  )
  assert b['inputs'].dtype == np.float32
  np.testing.assert_allclose(b['inputs'][0], floats[:4], rtol=1e-6)


def test_empty_split_has_no_eval_batches():
  images, labels = _data(0)
  assert not list(
      input_pipeline.eval_iterator(
          images, labels, num_classes=NUM_CLASSES, batch_size=4
      )
  )


def test_training_order_follows_the_contract():
  images, labels = _data(50)
  steps_per_epoch = 50 // 12
  got = _global_train_steps(
      images,
      labels,
      2 * steps_per_epoch + 1,
      process_count=1,
      local_device_count=1,
  )
  for s, ids in enumerate(got):
    epoch, i = divmod(s, steps_per_epoch)
    perm = np.random.default_rng([7, epoch]).permutation(50)
    np.testing.assert_array_equal(ids, perm[i * 12 : (i + 1) * 12])
  first_epoch = np.concatenate(got[:steps_per_epoch])
  assert (
      len(np.unique(first_epoch)) == len(first_epoch) == steps_per_epoch * 12
  )  # remainder dropped
  assert not np.array_equal(
      got[0], got[steps_per_epoch]
  )  # each epoch is reshuffled


@pytest.mark.parametrize(
    'process_count,local_device_count', [(2, 1), (4, 1), (2, 3), (1, 4)]
)
def test_training_order_does_not_depend_on_process_count(
    process_count, local_device_count
):
  images, labels = _data(50)
  reference = _global_train_steps(
      images, labels, 9, process_count=1, local_device_count=1
  )
  got = _global_train_steps(
      images,
      labels,
      9,
      process_count=process_count,
      local_device_count=local_device_count,
  )
  for a, b in zip(reference, got):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('start_step', [1, 4, 9])
def test_resume_yields_the_same_batches(start_step):
  images, labels = _data(50)
  kwargs = dict(
      num_classes=NUM_CLASSES,
      batch_size=12,
      seed=3,
      process_index=1,
      process_count=2,
      local_device_count=2,
  )
  full = list(
      itertools.islice(
          input_pipeline.train_iterator(images, labels, **kwargs),
          start_step + 6,
      )
  )
  resumed = list(
      itertools.islice(
          input_pipeline.train_iterator(
              images, labels, start_step=start_step, **kwargs
          ),
          6,
      )
  )
  for a, b in zip(full[start_step:], resumed):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert (
      resumed[0]['inputs'].shape == (2, 3, 2, 3, 3, 1)
      and resumed[0]['batch_mask'].all()
  )


def test_batch_size_must_split_over_devices():
  images, labels = _data(50)
  with pytest.raises(
      ValueError, match=r'process_count \* local_device_count = 2 \* 4 = 8'
  ):
    next(
        input_pipeline.train_iterator(
            images,
            labels,
            num_classes=NUM_CLASSES,
            batch_size=12,
            seed=0,
            process_count=2,
            local_device_count=4,
        )
    )
  with pytest.raises(ValueError, match='multiple of'):
    next(
        input_pipeline.eval_iterator(
            images,
            labels,
            num_classes=NUM_CLASSES,
            batch_size=5,
            process_count=2,
            local_device_count=1,
        )
    )
  with pytest.raises(ValueError, match='fewer than one global batch'):
    next(
        input_pipeline.train_iterator(
            images[:7],
            labels[:7],
            num_classes=NUM_CLASSES,
            batch_size=8,
            seed=0,
        )
    )
  with pytest.raises(ValueError, match='process_index 2'):
    next(
        input_pipeline.eval_iterator(
            images,
            labels,
            num_classes=NUM_CLASSES,
            batch_size=4,
            process_index=2,
            process_count=2,
        )
    )


def test_batches_prefetch_to_device_ahead_one_shard_per_device():
  """The trainer's feed: flax.jax_utils.prefetch_to_device over these batches."""
  devices = jax.local_devices()
  images, labels = _data(40)
  consumed = []

  def source():
    for b in input_pipeline.eval_iterator(
        images,
        labels,
        num_classes=NUM_CLASSES,
        batch_size=2 * len(devices),
        local_device_count=len(devices),
    ):
      consumed.append(1)
      yield b

  host = list(
      input_pipeline.eval_iterator(
          images,
          labels,
          num_classes=NUM_CLASSES,
          batch_size=2 * len(devices),
          local_device_count=len(devices),
      )
  )
  it = jax_utils.prefetch_to_device(source(), 2, axis_name=model.AXIS_NAME)
  first = next(it)
  assert len(consumed) == 2
  out = [first] + list(it)
  assert len(out) == len(host)
  for dev_batch, host_batch in zip(out, host):
    for k in host_batch:
      assert isinstance(dev_batch[k], jax.Array)
      assert len(dev_batch[k].addressable_shards) == len(devices)
      assert {s.data.shape[0] for s in dev_batch[k].addressable_shards} == {1}
      np.testing.assert_array_equal(np.asarray(dev_batch[k]), host_batch[k])


def test_worker_threads_change_nothing_and_stop_on_close():
  images, labels = _data(50)
  kwargs = dict(
      num_classes=NUM_CLASSES,
      batch_size=12,
      seed=1,
      process_index=0,
      process_count=2,
  )
  one = list(
      itertools.islice(
          input_pipeline.train_iterator(
              images, labels, num_workers=1, **kwargs
          ),
          10,
      )
  )
  it = input_pipeline.train_iterator(images, labels, num_workers=3, **kwargs)
  many = list(itertools.islice(it, 10))
  for a, b in zip(one, many):
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
  it.close()
  deadline = time.time() + 5
  while (
      any(t.name.startswith('input_pipeline') for t in threading.enumerate())
      and time.time() < deadline
  ):
    time.sleep(0.01)
  assert not any(
      t.name.startswith('input_pipeline') for t in threading.enumerate()
  )
