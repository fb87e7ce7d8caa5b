"""Two processes on 127.0.0.1 (JAX's CPU collectives, gloo) train like one process with as many devices.

Each run is `python main.py` itself, so the jax.distributed start-up, per-process data
shards, cross-process metrics and Orbax's multi-process checkpoints are all exercised.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from vivit_flax import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, 'configs', 'synthetic', 'vivit_smoke.py')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _main_command(workdir, data_dir, *extra):
  return [
      sys.executable,
      os.path.join(REPO, 'main.py'),
      f'--config={SMOKE}',
      f'--workdir={workdir}',
      f'--config.dataset_configs.data_dir={data_dir}',
      '--config.num_training_steps=3',
      '--config.log_eval_steps=100',
      *extra,
  ]


def _env(local_devices):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={local_devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  return env


def _run_all(commands, env, timeout=300):
  procs = [
      subprocess.Popen(
          c,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
          cwd=REPO,
      )
      for c in commands
  ]
  outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  return outputs


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  from vivit_flax import datasets  # pylint: disable=g-import-not-at-top
  from configs.synthetic import vivit_smoke  # pylint: disable=g-import-not-at-top

  path = tmp_path_factory.mktemp('data')
  config = vivit_smoke.get_config()
  config.dataset_configs.data_dir = str(path)
  datasets.get_dataset(
      config, process_index=0, process_count=1, local_device_count=1
  )
  return str(path)


def test_two_processes_match_one_process_with_the_same_devices(
    data_dir, tmp_path
):
  single, multi = tmp_path / 'one_process', tmp_path / 'two_processes'
  _run_all([_main_command(single, data_dir)], _env(local_devices=4))
  port = _free_port()
  _run_all(
      [
          _main_command(
              multi,
              data_dir,
              f'--coordinator_address=127.0.0.1:{port}',
              '--num_processes=2',
              f'--process_id={i}',
          )
          for i in range(2)
      ],
      _env(local_devices=2),
  )

  params_single, _ = checkpoints.restore_params(str(single))
  params_multi, _ = checkpoints.restore_params(str(multi))
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      params_multi,
      params_single,
  )

  results_single = json.loads((single / 'results.json').read_text())
  results_multi = json.loads((multi / 'results.json').read_text())
  assert results_multi['num_devices'] == results_single['num_devices'] == 4
  from configs.synthetic import vivit_smoke  # pylint: disable=g-import-not-at-top

  sizes = vivit_smoke.get_config().dataset_configs
  for split, size in (('validation', sizes.num_val), ('test', sizes.num_test)):
    assert results_multi[split]['num_examples'] == size
    assert results_multi[split]['accuracy'] == pytest.approx(
        results_single[split]['accuracy']
    )
