"""Samples/s of a config's input pipeline alone, without the model."""

import time

import jax
from flax import jax_utils

from benchmarks import timing
from vivit_flax import datasets, default_config, train_utils


def throughput(config, batches=50, windows=5):
  """Samples/s of dataset.train_iter alone (host batches) and through prefetch_to_device."""
  dataset = datasets.get_dataset(config)
  result = {'dataset': config.dataset_name, 'batch_size': config.batch_size}
  for name in ('host', 'prefetch_to_device'):
    iterator = dataset.train_iter(0)
    if name == 'prefetch_to_device':
      iterator = jax_utils.prefetch_to_device(
          iterator,
          default_config.with_defaults(
              config
          ).dataset_configs.prefetch_to_device,
          axis_name=train_utils.AXIS_NAME,
      )
    next(iterator)
    rates = []
    for _ in range(windows):
      start = time.perf_counter()
      for _ in range(batches):
        jax.block_until_ready(next(iterator))
      rates.append(batches * config.batch_size / (time.perf_counter() - start))
    result[name] = {'samples_per_s': timing.median(rates), 'all': rates}
  return result
