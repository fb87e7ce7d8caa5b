r"""Kills `python main.py` at random moments and resumes it, comparing each resumed run with an
uninterrupted one, bit for bit: the final parameters (the moving average where kept), the best
checkpoint's and every score in results.json.

  python -m benchmarks.resume_stress --cycles=12            (the trainer tests' flags)
  python -m benchmarks.resume_stress --cycles=12 --ema      (with EMA_FLAGS too)

The runs are the smoke config's, 2 CPU devices, on its synthetic set; tests/test_trainer.py
runs one cycle of each kind with the same helpers. Prints one line per cycle and exits non-zero
if any cycle differs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging
import jax
import numpy as np

from vivit_flax import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, 'configs', 'synthetic', 'vivit_smoke.py')
STEPS = 24
# Checkpoints every 2 steps (the newest 3 kept), validation every 16 steps (one epoch), dropout
# and every volume augmentation, so that resuming must also reproduce the random numbers of the
# model and of the input pipeline.
FLAGS = (
    f'--config.num_training_steps={STEPS}',
    '--config.checkpoint_steps=2',
    '--config.log_summary_steps=4',
    '--config.model.dropout_rate=0.1',
    '--config.dataset_configs.augmentation.flip_axes=(0, 1, 2)',
    '--config.dataset_configs.augmentation.rotate_planes=((1, 2),)',
    '--config.dataset_configs.augmentation.max_shift=2',
    '--config.dataset_configs.augmentation.intensity=0.1',
    '--config.dataset_configs.augmentation.mixup_alpha=0.4',
    '--config.dataset_configs.augmentation.cutmix_alpha=1.0',
)
# The options whose state a resumed run must also restore: the parameter average (in the
# checkpoint) and the best validation score so far (in checkpoints_best/), evaluated every 4 steps.
EMA_FLAGS = (
    '--config.ema_decay=0.9',
    '--config.best_checkpoint_metric=accuracy',
    '--config.log_eval_steps=4',
    '--config.tta_flip_axes=(1, 2)',
)
RUN_TIMEOUT_S = 300


class SmokeRun:
  """Runs main.py on the smoke config in subprocesses that share the data and, to save
  most of the compile time after the first run, a JAX compilation cache."""

  def __init__(self, data_dir, cache_dir):
    self.data_dir = data_dir
    self.env = dict(
        os.environ,
        JAX_PLATFORMS='cpu',
        TF_CPP_MIN_LOG_LEVEL='2',
        XLA_FLAGS='--xla_force_host_platform_device_count=2',
        JAX_COMPILATION_CACHE_DIR=cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    )

  def start(self, workdir, *overrides):
    command = [
        sys.executable,
        os.path.join(REPO, 'main.py'),
        f'--config={SMOKE}',
        f'--workdir={workdir}',
        f'--config.dataset_configs.data_dir={self.data_dir}',
        *FLAGS,
        *overrides,
    ]
    return subprocess.Popen(
        command,
        env=self.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

  def run(self, workdir, *overrides):
    """Runs main.py to its end; returns (exit code, output)."""
    proc = self.start(workdir, *overrides)
    output = proc.communicate(timeout=RUN_TIMEOUT_S)[0]
    return proc.returncode, output


def finished_steps(workdir):
  """Steps of the finished checkpoints in `workdir` (Orbax renames a save into place when done)."""
  folder = os.path.join(workdir, 'checkpoints')
  return (
      sorted(int(n) for n in os.listdir(folder) if n.isdigit())
      if os.path.isdir(folder)
      else []
  )


def wait_for_checkpoint(proc, workdir, step):
  """Blocks until `workdir` holds a finished checkpoint of step `step` or later."""
  deadline = time.time() + RUN_TIMEOUT_S
  while not finished_steps(workdir) or finished_steps(workdir)[-1] < step:
    if proc.poll() is not None or time.time() > deadline:
      proc.kill()
      raise AssertionError(
          f'No checkpoint of step >= {step} appeared:\n{proc.communicate()[0][-4000:]}'
      )
    time.sleep(0.02)


def results_without_time(workdir):
  """results.json of `workdir` without its wall time."""
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  del results['train_seconds']
  return results


def largest_difference(tree, reference) -> float:
  """max |a - b| over the leaves of two parameter trees of one structure."""
  return max(
      float(np.max(np.abs(a - b)))
      for a, b in zip(
          jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(reference)
      )
  )


_CYCLES = flags.DEFINE_integer('cycles', 12, 'Kill-and-resume cycles.')
_EMA = flags.DEFINE_bool(
    'ema', False, 'Add EMA_FLAGS (moving average, best checkpoint).'
)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the kill moments.')


def main(argv):
  del argv
  # Orbax logs every restore at INFO and each read-only manager at WARNING.
  logging.set_verbosity(logging.ERROR)
  from vivit_flax.datasets import synthetic  # pylint: disable=g-import-not-at-top
  from configs.synthetic import vivit_smoke  # pylint: disable=g-import-not-at-top

  overrides = EMA_FLAGS if _EMA.value else ()
  root = tempfile.mkdtemp(prefix='resume_stress_')
  sizes = vivit_smoke.get_config().dataset_configs
  synthetic.write(
      os.path.join(root, synthetic.FILE_NAME),
      num_train=sizes.num_train,
      num_val=sizes.num_val,
      num_test=sizes.num_test,
  )
  runs = SmokeRun(root, os.path.join(root, 'jax_cache'))
  reference = os.path.join(root, 'reference')
  code, output = runs.run(reference, *overrides)
  if code:
    sys.exit(output[-4000:])
  kinds = ('latest', 'best') if _EMA.value else ('latest',)
  expected = {k: checkpoints.restore_params(reference, k)[0] for k in kinds}
  rng, failed = random.Random(_SEED.value), 0
  for cycle in range(_CYCLES.value):
    workdir = os.path.join(root, f'cycle_{cycle}')
    proc = runs.start(workdir, *overrides)
    wait_for_checkpoint(proc, workdir, rng.randrange(2, STEPS - 6))
    time.sleep(
        rng.random() * 0.5
    )  # Often inside a step or an asynchronous save.
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=RUN_TIMEOUT_S)
    killed_at = finished_steps(workdir)[-1]
    code, output = runs.run(workdir, *overrides)
    if code:
      sys.exit(output[-4000:])
    differences = {
        k: largest_difference(checkpoints.restore_params(workdir, k)[0], v)
        for k, v in expected.items()
    }
    same = results_without_time(workdir) == results_without_time(reference)
    failed += not same or any(differences.values())
    print(
        f'cycle {cycle}: resumed from step {killed_at}; max |difference| of the '
        + ', '.join(f'{k} parameters {v:.3g}' for k, v in differences.items())
        + f'; results.json {"identical" if same else "DIFFERENT"}',
        flush=True,
    )
  print(
      f'{failed} of {_CYCLES.value} resumed runs differ from the uninterrupted one.'
  )
  if failed:
    sys.exit(f'The workdirs are kept in {root}.')
  shutil.rmtree(root)


if __name__ == '__main__':
  app.run(main)
