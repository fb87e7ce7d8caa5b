"""Host settings that let XLA:CPU train at full speed on a CPU-only machine.

Two levers, both measured in benchmarks/RESULTS.md:

* One JAX device per core (`jax_num_cpu_devices`): the pmapped step runs one
  replica per core, each on its share of the batch, which keeps both cores busy
  where a single device's small matrix products leave one idle much of the time.
* Freed memory kept in the process (glibc `mallopt`): XLA:CPU allocates each
  step's temporary buffer anew (about 120 MB for the Keras configuration), and
  glibc by default maps such a block from the kernel and unmaps it when freed,
  so every step faults in and zeroes it page by page again. With mmap
  disabled and trimming off, the next step reuses the same memory. glibc's
  per-thread heaps hold blocks up to 64 MiB; larger ones are still mapped.
"""

import ctypes
import ctypes.util
import os
import sys
from typing import Optional

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_FORCED_DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'


def set_cpu_device_count(count: Optional[int]) -> None:
  """Asks JAX for `count` CPU devices (None: one per core this process may run on).

  Must run before JAX initialises its backends. Leaves the count alone when
  XLA_FLAGS already forces one (as the tests do); the CPU backend is only the
  default where there is no accelerator, so GPU and TPU hosts are unaffected.
  """
  if count is not None and count < 1:
    raise ValueError(
        f'--cpu_devices={count}: use a positive number of CPU devices '
        '(or leave it unset for one per core).'
    )
  if _FORCED_DEVICE_COUNT_FLAG in os.environ.get('XLA_FLAGS', ''):
    return
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update('jax_num_cpu_devices', count or usable_core_count())


def usable_core_count() -> int:
  """The CPU cores this process may run on: its affinity mask (`taskset`, a
  cluster's cgroup), not every core of the machine."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def keep_freed_memory() -> bool:
  """Makes glibc malloc reuse freed blocks instead of returning them to the kernel.

  Returns False (and changes nothing) where the C library is not glibc.
  """
  if not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  return bool(mallopt(_M_MMAP_MAX, 0)) and bool(
      mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
  )
