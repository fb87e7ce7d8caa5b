"""Test-wide setup: eight virtual CPU devices, so data-parallel code runs as on an 8-chip host."""

import os

import pytest

# Must happen before JAX initialises its backends.
os.environ['XLA_FLAGS'] = ' '.join(
    [
        os.environ.get('XLA_FLAGS', ''),
        '--xla_force_host_platform_device_count=8',
    ]
).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


@pytest.fixture(scope='session')
def smoke_data_dir(tmp_path_factory):
  """A folder holding the synthetic set at the smoke config's sizes, written once per session."""
  from configs.synthetic import vivit_smoke  # pylint: disable=g-import-not-at-top
  from vivit_flax.datasets import synthetic  # pylint: disable=g-import-not-at-top

  sizes = vivit_smoke.get_config().dataset_configs
  data_dir = tmp_path_factory.mktemp('smoke_data')
  synthetic.write(
      str(data_dir / synthetic.FILE_NAME),
      num_train=sizes.num_train,
      num_val=sizes.num_val,
      num_test=sizes.num_test,
  )
  return str(data_dir)
