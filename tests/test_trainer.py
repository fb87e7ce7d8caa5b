"""`python main.py` survives interruptions and refuses to compute something else.

A run killed (SIGKILL) or preempted (SIGTERM) at a random step and restarted in the same
workdir ends with bitwise the same parameters and metrics as an uninterrupted run; a NaN
loss stops the run and leaves the checkpoints as they were; a checkpoint of another model
is refused, naming the parameter, with nothing in the workdir lost or overwritten; a
damaged checkpoint is refused, naming its folder. The runs are subprocesses on the smoke
config, 2 CPU devices, over a small synthetic set, through benchmarks/resume_stress.py's
helpers (which repeats the kill-and-resume cycle at random moments as often as asked).
"""

import json
import os
import random
import re
import shutil
import signal

import jax
import ml_collections
import numpy as np
import pytest

from benchmarks.resume_stress import (
    EMA_FLAGS,
    RUN_TIMEOUT_S,
    STEPS,
    SmokeRun,
    finished_steps,
    results_without_time,
    wait_for_checkpoint,
)
from vivit_flax import checkpoints


def _snapshot(folder):
  """relative path -> (size, mtime_ns, bytes) of every file under `folder`."""
  files = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, folder)] = (
            os.stat(path).st_size,
            os.stat(path).st_mtime_ns,
            f.read(),
        )
  return files


def _scores(workdir):
  results = json.loads(open(os.path.join(workdir, 'results.json')).read())
  return results['steps'], results['validation'], results['test']


def _assert_same_params(workdir, reference):
  params, _ = checkpoints.restore_params(workdir)
  expected, _ = checkpoints.restore_params(reference)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      expected
  )
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, expected)


@pytest.fixture(scope='module')
def main(smoke_data_dir, tmp_path_factory):
  """A SmokeRun over the smoke config's synthetic set at its configured size."""
  return SmokeRun(smoke_data_dir, str(tmp_path_factory.mktemp('jax_cache')))


@pytest.fixture(scope='module')
def reference(main, tmp_path_factory):
  """The workdir of an uninterrupted run of STEPS steps."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  code, output = main.run(workdir)
  assert code == 0, output[-4000:]
  assert finished_steps(workdir) == [
      STEPS - 4,
      STEPS - 2,
      STEPS,
  ]  # max_checkpoints_to_keep=3
  return workdir


def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(
    main, reference, tmp_path
):
  workdir = str(tmp_path)
  kill_after = random.Random(6).randrange(2, STEPS - 6)
  proc = main.start(workdir)
  wait_for_checkpoint(proc, workdir, kill_after)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=RUN_TIMEOUT_S)
  assert proc.returncode == -signal.SIGKILL
  killed_at = finished_steps(workdir)[-1]
  assert 0 < killed_at < STEPS

  code, output = main.run(workdir)
  assert code == 0, output[-4000:]
  assert f'Resuming from the checkpoint of step {killed_at}' in output
  # Whatever save the kill interrupted left only a temporary folder, removed on resuming.
  assert all(
      name.isdigit()
      for name in os.listdir(os.path.join(workdir, 'checkpoints'))
  )
  _assert_same_params(workdir, reference)
  # Deterministic: the same config and seed give the same metrics, resumed or not.
  assert _scores(workdir) == _scores(reference)


def test_sigterm_checkpoints_the_current_step_exits_cleanly_and_resumes_identically(
    main, reference, tmp_path
):
  workdir = str(tmp_path)
  signal_after = random.Random(7).randrange(2, STEPS - 6)
  proc = main.start(workdir)
  wait_for_checkpoint(proc, workdir, signal_after)
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=RUN_TIMEOUT_S)[0]
  assert proc.returncode == 0 and 'Traceback' not in output, output[-4000:]
  preempted_at = int(
      re.search(r'Preempted: checkpoint of step (\d+) saved', output).group(1)
  )
  assert signal_after <= preempted_at < STEPS
  assert finished_steps(workdir)[-1] == preempted_at
  assert not os.path.exists(os.path.join(workdir, 'results.json'))

  code, output = main.run(workdir)
  assert code == 0, output[-4000:]
  assert f'Resuming from the checkpoint of step {preempted_at}' in output
  _assert_same_params(workdir, reference)
  assert _scores(workdir) == _scores(reference)


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoints(
    main, reference, tmp_path
):
  workdir = str(tmp_path / 'workdir')
  shutil.copytree(reference, workdir)
  before = _snapshot(os.path.join(workdir, 'checkpoints'))
  # Resumes at STEPS with an absurd learning rate; no checkpoint is due before the loss
  # diverges (checkpoint_steps=100), so any checkpoint written would be of a diverged state.
  code, output = main.run(
      workdir,
      '--config.lr_configs.base_learning_rate=1e30',
      f'--config.num_training_steps={STEPS + 20}',
      '--config.checkpoint_steps=100',
  )
  assert code != 0, output[-4000:]
  match = re.search(
      r'error: The training (loss|gradient norm) is (nan|inf|-inf) at step (\d+)',
      output,
  )
  assert match, output[-4000:]
  assert STEPS < int(match.group(3)) <= STEPS + 20
  assert _snapshot(os.path.join(workdir, 'checkpoints')) == before


def test_checkpoint_of_another_model_is_refused_naming_the_parameter(
    main, reference, tmp_path
):
  workdir = str(tmp_path / 'workdir')
  shutil.copytree(reference, workdir)
  before = _snapshot(workdir)
  code, output = main.run(workdir, '--config.model.hidden_size=64')
  assert code != 0, output[-4000:]
  assert re.search(
      r"error: The checkpoint in \S+ does not fit this config: \['params'\]\S+ has "
      r'shape \(.*32.*\) there but \(.*64.*\) in the model',
      output,
  ), output[-4000:]
  after = _snapshot(workdir)
  assert {
      path: after[path] for path in before
  } == before  # config.json included
  # The only new files are the (empty) TensorBoard event file of the refused run.
  assert all('tfevents' in path for path in set(after) - set(before))


def test_damaged_checkpoint_fails_naming_its_folder(reference, tmp_path):
  workdir = str(tmp_path / 'workdir')
  shutil.copytree(reference, workdir)
  folder = os.path.join(workdir, 'checkpoints', str(STEPS))
  with checkpoints.create_manager(
      workdir, ml_collections.ConfigDict()
  ) as manager:
    target = jax.tree_util.tree_map(
        lambda leaf: np.zeros(leaf.shape, leaf.dtype),
        manager.item_metadata(STEPS)['state'],
    )
    checkpoints.restore_latest(manager, target)  # Intact, it restores.
    with open(
        os.path.join(folder, 'state', 'manifest.ocdbt'), 'r+b'
    ) as f:  # The array index.
      f.truncate(10)
    with pytest.raises(
        checkpoints.CheckpointDamagedError,
        match=f'The checkpoint {folder} cannot be read .* Move {folder} out of',
    ):
      checkpoints.restore_latest(manager, target)


def test_sigkill_then_resume_with_ema_and_best_checkpoint_is_bitwise_identical(
    main, tmp_path
):
  reference_dir, workdir = str(tmp_path / 'reference'), str(
      tmp_path / 'resumed'
  )
  code, output = main.run(reference_dir, *EMA_FLAGS)
  assert code == 0, output[-4000:]
  kill_after = random.Random(8).randrange(6, STEPS - 6)
  proc = main.start(workdir, *EMA_FLAGS)
  wait_for_checkpoint(proc, workdir, kill_after)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=RUN_TIMEOUT_S)
  killed_at = finished_steps(workdir)[-1]
  assert 0 < killed_at < STEPS

  code, output = main.run(workdir, *EMA_FLAGS)
  assert code == 0, output[-4000:]
  assert f'Resuming from the checkpoint of step {killed_at}' in output
  _assert_same_params(
      workdir, reference_dir
  )  # The averages, which restore_params serves.
  best, expected_best = (
      checkpoints.restore_params(w, 'best')[0] for w in (workdir, reference_dir)
  )
  jax.tree_util.tree_map(np.testing.assert_array_equal, best, expected_best)
  results = results_without_time(workdir)
  assert results == results_without_time(reference_dir)
  assert (
      results['best']['step'] <= STEPS
      and 'balanced_accuracy' in results['best']['test']
  )
