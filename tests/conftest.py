"""Test-wide setup: eight virtual CPU devices, so data-parallel code runs as on an 8-chip host."""

import os

# Must happen before JAX initialises its backends.
os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', ''), '--xla_force_host_platform_device_count=8']).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
