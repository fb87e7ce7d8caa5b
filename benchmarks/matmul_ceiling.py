"""The machine's matmul ceiling, the FLOP/s that benchmarks.throughput divides by."""

import time

import jax
import jax.numpy as jnp

from benchmarks import timing


class MatmulCeiling:
  """The machine's matmul ceiling: FLOP/s of a large square matrix product on the default device
  with the default threads (float32 on CPU, bfloat16 on accelerators). `sample()` times one
  product; the benchmark samples it between its timed windows, so that ceiling and step see the
  same machine load."""

  def __init__(self, dtype=None, size=None):
    on_cpu = jax.default_backend() == 'cpu'
    self.dtype = jnp.dtype(dtype or (jnp.float32 if on_cpu else jnp.bfloat16))
    self.size = size or (2048 if on_cpu else 8192)
    self.samples = []
    keys = jax.random.split(jax.random.key(0))
    self._operands = [
        jax.random.normal(k, (self.size,) * 2, self.dtype) for k in keys
    ]
    self._product = jax.jit(jnp.matmul)
    jax.block_until_ready(self._product(*self._operands))
    start = time.perf_counter()
    jax.block_until_ready(self._product(*self._operands))
    # Products per sample: enough for 50 ms, so dispatch does not count on a fast device.
    self.inner = max(1, int(0.05 / (time.perf_counter() - start)))

  def sample(self, repeats=1):
    """Times `repeats` samples of `inner` back-to-back products; returns and keeps their FLOP/s."""
    rates = []
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(self.inner):
        out = self._product(*self._operands)
      jax.block_until_ready(out)
      rates.append(
          2 * self.size**3 * self.inner / (time.perf_counter() - start)
      )
    self.samples.extend(rates)
    return rates

  def summary(self, rates=None):
    """Median FLOP/s of `rates` (default: every sample so far), with the product's shape."""
    rates = self.samples if rates is None else rates
    return {
        'flops_per_s': timing.median(rates),
        'all': rates,
        'size': self.size,
        'dtype': self.dtype.name,
    }
