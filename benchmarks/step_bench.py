"""The step bench of benchmarks.throughput: the trainer's steps on random batches, timed."""

import time

import jax
import numpy as np
from flax import jax_utils

from vivit_flax import model as vivit_model
from vivit_flax import train_utils
from vivit_flax.datasets import input_pipeline

# How StepBench feeds its steps: one batch placed on the devices beforehand; a new host batch
# per step through flax.jax_utils.prefetch_to_device (as the trainer); numpy batches as they are.
FEEDS = ('device', 'prefetch', 'host')


def random_batch(rng, per_device, input_shape, num_classes, devices):
  """A host batch laid out as the datasets serve it: [devices, per_device, ...]."""
  labels = rng.integers(0, num_classes, (devices, per_device))
  return {
      'inputs': rng.random(
          (devices, per_device) + tuple(input_shape), dtype=np.float32
      ),
      'label': np.eye(num_classes, dtype=np.float32)[labels],
      'batch_mask': np.ones((devices, per_device), np.float32),
  }


class StepBench:
  """The trainer's pmapped train and eval steps for one config, on random data, timed by window.

  Attributes:
    config: the experiment config.
    input_shape, num_classes: the clips (T, H, W, C) and class count.
    batch_size, eval_batch_size: global batches.
    state: the replicated TrainState (advanced by every timed train step).
  """

  def __init__(
      self,
      config,
      input_shape,
      num_classes,
      batch_size,
      eval_batch_size,
      donate=True,
      feed='device',
      sync_every=None,
      seed=0,
  ):
    self.config = config
    self.input_shape = tuple(input_shape)
    self.num_classes = num_classes
    self.devices = jax.local_device_count()
    self.batch_size = batch_size
    self.eval_batch_size = eval_batch_size
    self.feed = feed
    self.sync_every = sync_every
    meta = {'num_classes': num_classes, 'input_shape': (-1,) + self.input_shape}
    self.model = vivit_model.get_model_cls(config.model_name)(config, meta)
    lr_fn = train_utils.create_learning_rate_fn(config, 10_000)
    state = train_utils.create_train_state(
        self.model.flax_model,
        meta['input_shape'],
        config,
        lr_fn,
        jax.random.PRNGKey(seed),
    )
    self.state = train_utils.replicate(state)
    self.p_train_step, self.p_eval_step = train_utils.pmapped_steps(
        self.model, config, lr_fn, donate
    )
    rng = np.random.default_rng(seed)
    self.host = {
        mode: [
            random_batch(
                rng,
                input_pipeline.per_device_batch_size(b, 1, self.devices),
                self.input_shape,
                num_classes,
                self.devices,
            )
            for _ in range(2)
        ]
        for mode, b in (('train', batch_size), ('eval', eval_batch_size))
    }
    self.on_device = {
        mode: next(
            jax_utils.prefetch_to_device(
                iter(batches[:1]), 1, axis_name=train_utils.AXIS_NAME
            )
        )
        for mode, batches in self.host.items()
    }
    self.steps_done = {'train': 0, 'eval': 0}

  def batches(self, mode, steps):
    """`steps` batches for `mode`, fed as `self.feed` says (see FEEDS)."""
    if self.feed == 'device':
      return iter([self.on_device[mode]] * steps)
    host = (self.host[mode][i % 2] for i in range(steps))
    if self.feed == 'prefetch':
      return jax_utils.prefetch_to_device(
          host, 2, axis_name=train_utils.AXIS_NAME
      )
    return host

  def run(self, mode, steps):
    """Runs `steps` steps of `mode`, as the trainer does, and waits for their results."""
    sync_every = self.sync_every
    out, pending = None, []
    guard = 'allow' if self.feed == 'host' else 'disallow'
    with jax.transfer_guard(guard):
      for batch in self.batches(mode, steps):
        if mode == 'train':
          self.state, out = self.p_train_step(self.state, batch)
          pending.append(out)
          if sync_every and (self.steps_done['train'] + 1) % sync_every == 0:
            jax.device_get(pending)
            pending = []
        else:
          out = self.p_eval_step(self.state, batch)
        self.steps_done[mode] += 1
    jax.block_until_ready((self.state, out))

  def window(self, mode, steps):
    """Samples/s of one window of `steps` steps."""
    batch = self.batch_size if mode == 'train' else self.eval_batch_size
    start = time.perf_counter()
    self.run(mode, steps)
    return steps * batch / (time.perf_counter() - start)

  def compiled(self, mode):
    """The AOT-compiled step of `mode` (for XLA's cost and memory analysis)."""
    batch = self.on_device[mode]
    if mode == 'train':
      return self.p_train_step.lower(self.state, batch).compile()
    return self.p_eval_step.lower(self.state, batch).compile()


def xla_analysis(bench, mode):
  """XLA's FLOPs per sample and memory (bytes per device) of the compiled step of `mode`."""
  compiled = bench.compiled(mode)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  per_device = (
      bench.batch_size if mode == 'train' else bench.eval_batch_size
  ) // bench.devices
  result = {'xla_flops_per_sample': float(cost.get('flops', 0.0)) / per_device}
  memory = compiled.memory_analysis()
  if memory is not None:
    result['memory_bytes'] = int(
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
  return result
