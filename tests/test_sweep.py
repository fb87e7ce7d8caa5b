"""Tests for vivit_flax.sweep: the hyper combinators, point names, overrides, tiny sweeps trained
in this process and as main.py processes (npz_video files of float [N, T, H, W, C] clips and of
uint8 [N, T, H, W] volumes, end to end), and sweeps run as a cluster runs them: one
`--point=K` process per point (killed, stopped, failing), then `--collect` and `--select`.
"""

import concurrent.futures
import csv
import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from benchmarks.resume_stress import finished_steps, wait_for_checkpoint
from vivit_flax import config_overrides, config_validation, files, model, sweep, sweep_results, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_CONFIG = """
from configs.synthetic import vivit_smoke


def get_config():
  config = vivit_smoke.get_config()
  config.dataset_name = 'npz_video'
  config.dataset_configs.path = {float_clips!r}
  config.model.patches.size = (4, 4, 4)
  config.num_training_steps = 2
  config.log_eval_steps = 100
  config.write_summary = False
  config.checkpoint = False
  return config


def get_hyper(hyper):
  return {hyper}
"""


@pytest.fixture
def make_sweep(tmp_path):
  """Writes npz_video files of float [N, 8, 8, 8, 2] clips and uint8 [N, 8, 8, 8] volumes, and a
  sweep config file training a tiny model on the float clips with get_hyper returning `hyper`.
  """
  rng = np.random.default_rng(0)
  float_clips, volumes = {}, {}
  for split, n in (('train', 16), ('val', 8), ('test', 8)):
    float_clips[f'{split}_images'] = rng.uniform(size=(n, 8, 8, 8, 2)).astype(
        np.float32
    )
    volumes[f'{split}_images'] = rng.integers(
        0, 256, (n, 8, 8, 8), dtype=np.uint8
    )
    float_clips[f'{split}_labels'] = volumes[f'{split}_labels'] = (
        np.arange(n) % 3
    )
  np.savez(tmp_path / 'float_clips.npz', **float_clips)
  np.savez(tmp_path / 'volumes.npz', **volumes)

  def make(
      hyper="hyper.sweep('config.lr_configs.base_learning_rate', [0.001, 0.01])",
  ):
    path = tmp_path / 'sweep_config.py'
    path.write_text(
        SWEEP_CONFIG.format(
            float_clips=str(tmp_path / 'float_clips.npz'), hyper=hyper
        )
    )
    return str(path)

  return make


def test_hyper_combinators():
  hyper = sweep.Hyper()
  points = hyper.product(
      [
          hyper.sweep('config.a', [1, 2]),
          hyper.zipit(
              [hyper.sweep('b.c', ['x', 'y']), hyper.sweep('d', [True, False])]
          ),
      ]
  )
  assert points == [
      {'config.a': 1, 'b.c': 'x', 'd': True},
      {'config.a': 1, 'b.c': 'y', 'd': False},
      {'config.a': 2, 'b.c': 'x', 'd': True},
      {'config.a': 2, 'b.c': 'y', 'd': False},
  ]
  assert hyper.product([]) == [{}]
  with pytest.raises(ValueError, match='one length'):
    hyper.zipit([hyper.sweep('a', [1, 2]), hyper.sweep('b', [1])])
  with pytest.raises(ValueError, match="'a' is set twice"):
    hyper.product([hyper.sweep('a', [1]), hyper.sweep('a', [2])])


def test_point_names_are_stable_and_safe():
  assert (
      sweep.point_name(
          {
              'lr_configs.base_learning_rate': 3e-4,
              'model.attention_config.type': 'spacetime',
          }
      )
      == 'base_learning_rate=0.0003,type=spacetime'
  )
  assert (
      sweep.point_name(
          {'model.num_heads': 4, 'model.spatial_transformer.num_heads': 2}
      )
      == 'model.num_heads=4,model.spatial_transformer.num_heads=2'
  )
  assert (
      sweep.point_name(
          {'model.patches.size': (4, 4, 2), 'dataset_configs.path': '/a b'}
      )
      == 'size=4x4x2,path=_a_b'
  )
  assert sweep.point_name({}) == 'base'


def test_overrides_and_main_py_flags(make_sweep):
  sweep_config = make_sweep()
  base, points = sweep.load_sweep(sweep_config)
  assert points == [
      {'lr_configs.base_learning_rate': 0.001},
      {'lr_configs.base_learning_rate': 0.01},
  ]
  config = config_overrides.apply_overrides(
      base, {'model.patches.size': (2, 2, 2), 'num_training_steps': 5}
  )
  assert (
      config.model.patches.size == (2, 2, 2) and config.num_training_steps == 5
  )
  assert base.model.patches.size == (4, 4, 4)
  with pytest.raises(
      ValueError,
      match='config.lr_configs.base_learnin_rate is not in the base '
      'config. Did you mean lr_configs.base_learning_rate',
  ):
    config_overrides.apply_overrides(
        base, {'lr_configs.base_learnin_rate': 1.0}
    )
  with pytest.raises(ValueError, match='config.num_training_steps=0.5'):
    config_overrides.apply_overrides(base, {'num_training_steps': 0.5})
  command = sweep.main_command(
      sweep_config,
      '/w',
      {'model.patches.size': (2, 2, 2), 'write_summary': False},
  )
  assert command[-2:] == [
      '--config.model.patches.size=(2, 2, 2)',
      '--config.write_summary=False',
  ]
  with pytest.raises(ValueError, match='--parallel=0'):
    sweep.main_command(sweep_config, '/w', {'num_training_steps': None})


def test_example_sweep_config_is_valid():
  base, points = sweep.load_sweep(
      os.path.join(REPO, 'configs', 'organmnist3d', 'sweep_lr_variant.py')
  )
  assert len(points) == 12 and len({sweep.point_name(p) for p in points}) == 12
  for point in points[
      :4
  ]:  # the four attention variants at the first learning rate
    config = config_overrides.apply_overrides(
        base, {**point, 'dataset_configs.download': True}
    )
    config_validation.validate(config, num_devices=1)
    model.ViViTClassificationModel(
        config, {'num_classes': 11, 'input_shape': (-1, 28, 28, 28, 1)}
    )


def test_in_process_sweep_trains_and_skips_finished_points(
    make_sweep, tmp_path, monkeypatch
):
  sweep_config, workdir = make_sweep(), tmp_path / 'sweep'
  names = ['base_learning_rate=0.001', 'base_learning_rate=0.01']
  (workdir / names[0]).mkdir(parents=True)
  (workdir / names[0] / 'results.json').write_text(
      json.dumps({'test': {'accuracy': 0.25}})
  )
  rows = sweep.run_sweep(
      sweep_config, str(workdir), metrics=['test.accuracy', 'validation.loss']
  )
  assert [r['name'] for r in rows] == names
  assert [r['status'] for r in rows] == ['done', 'done']
  assert (
      json.loads((workdir / names[1] / 'config.json').read_text())[
          'lr_configs'
      ]['base_learning_rate']
      == 0.01
  )
  with open(workdir / 'results.csv') as f:
    table = list(csv.DictReader(f))
  assert [float(r['lr_configs.base_learning_rate']) for r in table] == [
      0.001,
      0.01,
  ]
  assert (
      table[0]['test.accuracy'] == '0.25' and table[0]['validation.loss'] == ''
  )
  assert (
      0 <= float(table[1]['test.accuracy']) <= 1
      and float(table[1]['validation.loss']) > 0
  )
  markdown = (workdir / 'results.md').read_text().splitlines()
  assert markdown[0] == (
      '| name | lr_configs.base_learning_rate | test.accuracy | validation.loss '
      '| status |'
  )
  assert (
      len(markdown) == 4
      and markdown[2] == f'| {names[0]} | 0.001 | 0.25 |  | done |'
  )

  # A rerun trains only the point whose results.json is gone.
  (workdir / names[1] / 'results.json').unlink()
  trained = []

  def fake_train(config, point_workdir):
    trained.append((config.lr_configs.base_learning_rate, point_workdir))
    (workdir / names[1] / 'results.json').write_text(
        json.dumps({'test': {'accuracy': 0.5}})
    )
    return {}

  monkeypatch.setattr(trainer, 'train_and_evaluate', fake_train)
  rows = sweep.run_sweep(sweep_config, str(workdir))
  assert trained == [(0.01, str(workdir / names[1]))]
  assert [r['status'] for r in rows] == ['done', 'done'] and rows[1][
      'test.accuracy'
  ] == 0.5


def test_parallel_sweep_of_npz_files_through_main_py(make_sweep, tmp_path):
  """Two main.py processes at once, one on float [N, T, H, W, C] clips, one on uint8
  [N, T, H, W] volumes (npz_video end to end)."""
  files = [str(tmp_path / 'float_clips.npz'), str(tmp_path / 'volumes.npz')]
  sweep_config = make_sweep(
      f"hyper.sweep('config.dataset_configs.path', {files!r})"
  )
  workdir = tmp_path / 'sweep'
  rows = sweep.run_sweep(
      sweep_config,
      str(workdir),
      parallel=2,
      overrides={'model.patches.size': (8, 8, 4)},
  )
  logs = {
      r['name']: (workdir / r['name'] / 'log.txt').read_text()[-3000:]
      for r in rows
  }
  assert [r['status'] for r in rows] == ['done', 'done'], logs
  for row, path in zip(rows, files):
    config = json.loads((workdir / row['name'] / 'config.json').read_text())
    assert config['dataset_configs']['path'] == path
    assert config['model']['patches']['size'] == [8, 8, 4]
    assert 0 <= row['test.accuracy'] <= 1 and 0 <= row['test.auc'] <= 1


def _cli(sweep_config, workdir, *flags, env=None, stderr=subprocess.STDOUT):
  """A `python -m vivit_flax.sweep` process (its stdout, and by default stderr too, in
  .communicate()[0])."""
  return subprocess.Popen(
      [
          sys.executable,
          '-m',
          'vivit_flax.sweep',
          f'--config={sweep_config}',
          f'--workdir={workdir}',
          *flags,
      ],
      cwd=REPO,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2', **(env or {})},
      stdout=subprocess.PIPE,
      stderr=stderr,
      text=True,
  )


def _finish(proc, timeout=300):
  """(exit status, output) of a _cli process."""
  output = proc.communicate(timeout=timeout)[0]
  return proc.returncode, output


def _fake_results(workdir, name, accuracy, loss):
  """A finished point: its results.json and point.json, nothing trained."""
  point_dir = os.path.join(workdir, name)
  sweep_results.record_start(point_dir, 0, {'rng_seed': 3})
  files.write_atomic(  # As the trainer writes it.
      os.path.join(point_dir, 'results.json'),
      json.dumps(
          {
              'validation': {'accuracy': accuracy, 'loss': loss},
              'test': {'accuracy': 1 - accuracy, 'loss': 2.0},
          }
      ),
  )


LR_BY_SEED = (
    "hyper.product([hyper.sweep('config.lr_configs.base_learning_rate', "
    "[0.001, 0.01]), hyper.sweep('config.rng_seed', [0, 1])])"
)


def test_list_is_stable_across_calls_and_process_counts(make_sweep, tmp_path):
  sweep_config, workdir = make_sweep(LR_BY_SEED), tmp_path / 'sweep'
  listing = sweep.listing(sweep.load(sweep_config))
  lines = listing.splitlines()
  assert lines[0] == '4' and len(lines) == 5
  assert lines[2] == (
      '1\tbase_learning_rate=0.001,rng_seed=1\t'
      '{"lr_configs.base_learning_rate": 0.001, "rng_seed": 1}'
  )
  # Another process, with one device instead of eight, inside a (fake) 2-task SLURM step,
  # another hash seed, and a point finished meanwhile: the same text.
  _fake_results(str(workdir), 'base_learning_rate=0.01,rng_seed=0', 0.5, 1.0)
  proc = _cli(
      sweep_config,
      workdir,
      '--list',
      env={
          'XLA_FLAGS': '--xla_force_host_platform_device_count=1',
          'SLURM_NTASKS': '2',
          'PYTHONHASHSEED': '7',
      },
      stderr=subprocess.PIPE,
  )
  output, errors = proc.communicate(timeout=300)
  assert proc.returncode == 0, errors[-3000:]
  assert output == listing + '\n'
  assert sweep.listing(sweep.load(sweep_config)) == listing


def test_point_processes_then_collect_give_the_local_sweep_table(
    make_sweep, tmp_path
):
  """Two `--point` processes started together; the table they leave, and --collect's, equal
  a local sweep's; --select names the best point on validation and its main.py command.
  """
  sweep_config = make_sweep()
  tasks, local = tmp_path / 'tasks', tmp_path / 'local'
  procs = [_cli(sweep_config, tasks, f'--point={k}') for k in (1, 0)]
  for proc in procs:
    code, output = _finish(proc)
    assert code == 0, output[-3000:]
  left_by_tasks = (tasks / 'results.csv').read_text()
  the_sweep = sweep.load(sweep_config)
  rows = sweep.collect(the_sweep, str(tasks))
  assert [r['status'] for r in rows] == ['done', 'done']
  sweep.run_sweep(sweep_config, str(local))
  assert left_by_tasks == (tasks / 'results.csv').read_text()
  assert left_by_tasks == (local / 'results.csv').read_text()
  assert (tasks / 'results.md').read_text() == (
      local / 'results.md'
  ).read_text()

  accuracies = {
      r['name']: sweep_results.results(str(tasks / r['name']))['validation'][
          'accuracy'
      ]
      for r in rows
  }
  best = max(accuracies, key=accuracies.get)  # the first of equals, as --select
  text = sweep.selection(the_sweep, str(tasks), 'validation.accuracy')
  assert text.splitlines()[0] == (
      'Best of 2/2 finished points on validation.accuracy (highest): ' + best
  )
  assert text.splitlines()[-1].endswith(
      f'--workdir={tasks / best} '
      f'--config.lr_configs.base_learning_rate={best.split("=")[1]}'
  )


def test_a_point_stopped_or_killed_mid_run_resumes_when_rerun(
    make_sweep, tmp_path
):
  sweep_config, workdir = make_sweep(), tmp_path / 'sweep'
  point_dir = str(workdir / 'base_learning_rate=0.001')
  steps = 20
  flags = (
      '--config.checkpoint=True',
      '--config.checkpoint_steps=1',
      f'--config.num_training_steps={steps}',
  )
  # The reruns load the first run's compiled steps.
  cache = {
      'JAX_COMPILATION_CACHE_DIR': str(tmp_path / 'jax_cache'),
      'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
  }
  # SIGTERM (a scheduler's warning): a checkpoint, exit status 75, point 1 never started.
  proc = _cli(sweep_config, workdir, '--point=0,1', *flags, env=cache)
  wait_for_checkpoint(proc, point_dir, 1)
  proc.send_signal(signal.SIGTERM)
  code, output = _finish(proc)
  assert code == sweep.PREEMPTED_EXIT_CODE, output[-3000:]
  rows = sweep.collect(sweep.load(sweep_config), str(workdir))
  assert [r['status'] for r in rows] == ['unfinished', 'not run']
  # SIGKILL, later on: the rerun resumes from the newest checkpoint.
  proc = _cli(sweep_config, workdir, '--point=0', *flags, env=cache)
  wait_for_checkpoint(proc, point_dir, finished_steps(point_dir)[-1] + 2)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  killed_at = finished_steps(point_dir)[-1]
  assert killed_at < steps
  code, output = _finish(
      _cli(sweep_config, workdir, '--point=0', *flags, env=cache)
  )
  assert code == 0, output[-3000:]
  assert f'Resuming from the checkpoint of step {killed_at}' in output
  rows = sweep.collect(sweep.load(sweep_config), str(workdir))
  assert [r['status'] for r in rows] == ['done', 'not run']


def test_a_failing_point_is_reported_as_failed(make_sweep, tmp_path):
  missing = str(tmp_path / 'missing.npz')
  sweep_config = make_sweep(
      "hyper.sweep('config.dataset_configs.path', "
      f"[{str(tmp_path / 'float_clips.npz')!r}, {missing!r}])"
  )
  the_sweep, workdir = sweep.load(sweep_config), str(tmp_path / 'sweep')
  statuses = sweep.train_points(the_sweep, workdir, [1])
  assert statuses[1].startswith('failed: ') and missing in statuses[1]
  rows = sweep.collect(the_sweep, workdir)
  assert [r['status'] for r in rows] == ['not run', statuses[1]]
  assert sweep_results.summary(rows) == (
      f'1 not run: {rows[0]["name"]}\n1 failed: {rows[1]["name"]}'
  )
  # A retry clears the marker when it starts.
  sweep_results.record_start(os.path.join(workdir, rows[1]['name']), 1, {})
  assert sweep_results.status(os.path.join(workdir, rows[1]['name'])) == (
      'unfinished'
  )


def test_select_chooses_on_validation(tmp_path):
  workdir, names = str(tmp_path), ['a', 'b', 'c']
  _fake_results(workdir, 'a', 0.5, 1.0)
  _fake_results(workdir, 'b', 0.7, 1.2)
  assert sweep_results.best(workdir, names, 'validation.accuracy')[0] == 'b'
  assert sweep_results.best(workdir, names, 'validation.loss')[0] == 'a'
  with pytest.raises(ValueError, match='choose on a validation score'):
    sweep_results.best(workdir, names, 'test.accuracy')
  with pytest.raises(
      ValueError,
      match='no finished point has this score; use one of '
      'validation.accuracy, validation.loss',
  ):
    sweep_results.best(workdir, names, 'validation.auc')
  with pytest.raises(ValueError, match='no point .* has finished'):
    sweep_results.best(workdir, ['c'], 'validation.auc')


def test_bad_input_ends_in_one_line_naming_the_fix(make_sweep, tmp_path):
  sweep_config, workdir = make_sweep(), tmp_path / 'sweep'
  _fake_results(str(workdir), 'base_learning_rate=0.001', 0.5, 1.0)
  for flag, message in (
      (
          '--point=2',
          "error: --point=2: '2' is not a point of this sweep; use 0 to 1 "
          '(--list shows them).',
      ),
      (
          '--select=validation.acc',
          'error: --select=validation.acc: no finished point has this score; '
          'use one of validation.accuracy, validation.loss.',
      ),
  ):
    code, output = _finish(_cli(sweep_config, workdir, flag))
    assert code == 1 and output.splitlines()[-1] == message, output[-3000:]
    assert 'Traceback' not in output


def test_tables_written_together_are_whole_and_end_complete(tmp_path):
  """Tasks finishing at once each write the tables; a reader never sees a partial one and the
  last table has every point."""
  workdir, names = str(tmp_path), [f'p{i}' for i in range(8)]
  points = [{'rng_seed': i} for i in range(8)]
  csv_path, stop, seen = tmp_path / 'results.csv', threading.Event(), []

  def finish(name):
    _fake_results(workdir, name, 0.5, 1.0)
    sweep_results.collect(workdir, names, points, ['validation.accuracy'])

  def read():
    while not stop.is_set():
      if csv_path.exists():
        with csv_path.open() as f:
          seen.append(len(list(csv.DictReader(f))))

  with concurrent.futures.ThreadPoolExecutor(len(names) + 1) as pool:
    reader = pool.submit(read)
    for task in [pool.submit(finish, name) for name in names]:
      task.result()
    stop.set()
    reader.result()
  assert seen and set(seen) == {8}
  with csv_path.open() as f:
    assert [r['status'] for r in csv.DictReader(f)] == ['done'] * 8
  assert not [n for n in os.listdir(workdir) if '.tmp-' in n]
