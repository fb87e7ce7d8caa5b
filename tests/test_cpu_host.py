"""Tests of the CPU host settings: device count and malloc's reuse of freed memory."""

import os
import subprocess
import sys

import pytest

from vivit_flax import cpu_host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_FAULTS_OF_A_REALLOCATION = """
import ctypes, resource, sys
from vivit_flax import cpu_host
if sys.argv[1] == 'keep':
  assert cpu_host.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 48 * 2**20  # Above glibc's largest mmap threshold (32 MiB), as XLA's step buffers are.

def page_faults_of_a_fresh_block():
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(SIZE)
  ctypes.memset(block, 1, SIZE)
  libc.free(block)
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

page_faults_of_a_fresh_block()
print(page_faults_of_a_fresh_block())
"""


def _run(code, *args, env=None):
  return subprocess.run(
      [sys.executable, '-c', code, *args],
      cwd=ROOT,
      env=env,
      check=True,
      capture_output=True,
      text=True,
  ).stdout


@pytest.mark.skipif(
    not sys.platform.startswith('linux'), reason='glibc mallopt is Linux-only'
)
def test_keep_freed_memory_reuses_a_freed_block_without_faulting_it_in_again():
  default = int(_run(_FAULTS_OF_A_REALLOCATION, 'default'))
  kept = int(_run(_FAULTS_OF_A_REALLOCATION, 'keep'))
  pages = 48 * 2**20 // 4096
  assert (
      default > pages // 2
  )  # glibc maps the block afresh: every page faults again.
  assert kept < pages // 20


def test_set_cpu_device_count_gives_jax_that_many_devices():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  code = (
      'import jax; from vivit_flax import cpu_host; cpu_host.set_cpu_device_count(3); '
      'print(jax.local_device_count(), jax.default_backend())'
  )
  assert _run(code, env=env).split() == ['3', 'cpu']


@pytest.mark.skipif(
    not hasattr(os, 'sched_getaffinity'), reason='no CPU affinity here'
)
def test_set_cpu_device_count_defaults_to_the_cores_the_process_may_use():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  code = (
      'import os, jax; from vivit_flax import cpu_host; '
      'os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); '
      'cpu_host.set_cpu_device_count(None); print(jax.local_device_count())'
  )
  assert _run(code, env=env).strip() == '1'


def test_set_cpu_device_count_leaves_a_count_forced_by_xla_flags():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=5')
  code = (
      'import jax; from vivit_flax import cpu_host; cpu_host.set_cpu_device_count(3); '
      'print(jax.local_device_count())'
  )
  assert _run(code, env=env).strip() == '5'


def test_set_cpu_device_count_rejects_a_non_positive_count():
  with pytest.raises(
      ValueError, match=r'--cpu_devices=0: use a positive number'
  ):
    cpu_host.set_cpu_device_count(0)
