r"""Hyper-parameter sweeps: the points of a config's `get_hyper(hyper)`, each trained in its own
sub-workdir, and one table of chosen metrics per point; on one machine, or one point per task of
a cluster's job array.

  python -m vivit_flax.sweep --config=configs/organmnist3d/sweep_lr_variant.py \
      --workdir=/tmp/organ_sweep [--parallel=2] [--metrics=test.accuracy,test.auc] \
      [--config.num_training_epochs=10]
  python -m vivit_flax.sweep --config=... --workdir=... --list       # the count, then the points
  python -m vivit_flax.sweep --config=... --workdir=... --point=7    # one task of a job array
  python -m vivit_flax.sweep --config=... --workdir=... --collect    # the tables, from disk
  python -m vivit_flax.sweep --config=... --workdir=... --select=validation.auc

Run it from the repository root. A sweep config file defines `get_config()` (the base config) and
`get_hyper(hyper)`, which builds a list of {dotted_key: value} overrides with `hyper.sweep`,
`hyper.product` and `hyper.zipit` (big_vision's convention; keys may start with 'config.').
Extra `--config.key=value` flags apply to every point. Each point trains in `<workdir>/<name>`,
the name made of its overrides only (e.g. `base_learning_rate=0.001,type=spacetime`), so a rerun
finds it again: finished points are skipped, others resume from their newest checkpoint.

Without a mode flag every point trains: `--parallel=0` (default) one after another in this
process; `--parallel=N` as N concurrent `python main.py ... --config.key=value` processes, each
logging to `<sub-workdir>/log.txt` (with N > 1 they share the accelerators: JAX's memory
preallocation is turned off for them unless XLA_PYTHON_CLIENT_PREALLOCATE is set). The modes:

  --list         the number of points, then `index<TAB>name<TAB>overrides as JSON` per point, in
                 get_hyper's order, which depends on nothing else: what a job array is sized and
                 indexed by.
  --point=K,...  trains those points in this process as main.py would (one of several processes,
                 it joins jax.distributed with main.py's flags; only process 0 writes the sweep's
                 files), so one command serves a task's first run and every requeue. Exits with
                 75 (EX_TEMPFAIL) when SIGTERM stopped it: rerun to resume.
  --collect      the tables from whatever has finished, naming the points not run, unfinished or
                 failed (a failed point leaves its error in `<sub-workdir>/failed.json`).
  --select=M     the finished point with the best validation score M (the highest; the lowest of
                 a loss): its name, scores and the main.py command that trains it.

Training ends by writing `<workdir>/results.csv` and `<workdir>/results.md`
(`sweep_results.collect`, safe against tasks finishing together).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from typing import Any, Iterable, Sequence

import jax
import ml_collections
import tqdm
from absl import app, flags, logging
from ml_collections import config_flags

from vivit_flax import command_line, config_overrides, config_validation, sweep_results, trainer
from vivit_flax.sweep_results import DONE, UNFINISHED

MAIN = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'main.py'
)
DEFAULT_METRICS = ('test.accuracy', 'test.auc')
# The errors main.py reports as bad input or a diverged run; a sweep records them and goes on.
POINT_ERRORS = (
    ValueError,
    FileNotFoundError,
    ConnectionError,
    FloatingPointError,
)
# sysexits.h's EX_TEMPFAIL: SIGTERM stopped a point before its end; the same command resumes it.
PREEMPTED_EXIT_CODE = 75


def _config_key(key: str) -> str:
  return key[len('config.') :] if key.startswith('config.') else key


def _merge(a: dict, b: dict) -> dict:
  both = set(a) & set(b)
  if both:
    raise ValueError(
        f'Sweep key {sorted(both)[0]!r} is set twice in one point.'
    )
  return {**a, **b}


class Hyper:
  """The `hyper` argument of a config's get_hyper: combinators of lists of overrides.

  A sweep is a list of points; a point is a dict {dotted config key: value}.
  """

  @staticmethod
  def sweep(key: str, values: Iterable[Any]) -> list[dict[str, Any]]:
    """One point per value of `key`."""
    return [{key: value} for value in values]

  @staticmethod
  def product(sweeps: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every combination of one point of each sweep; the last sweep varies fastest."""
    points = [{}]
    for sweep in sweeps:
      points = [_merge(p, q) for p in points for q in sweep]
    return points

  @staticmethod
  def zipit(sweeps: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Point i of every sweep merged into point i; the sweeps must be equally long."""
    if len({len(sweep) for sweep in sweeps}) > 1:
      raise ValueError(
          f'hyper.zipit needs sweeps of one length; got {[len(s) for s in sweeps]}.'
      )
    return [functools.reduce(_merge, group, {}) for group in zip(*sweeps)]


def load_sweep(
    config_path: str,
) -> tuple[ml_collections.ConfigDict, list[dict[str, Any]]]:
  """The base config (`get_config()`) and the points (`get_hyper(Hyper())`, keys without the
  'config.' prefix) of the sweep config file at `config_path`."""
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'The sweep config {config_path} does not exist.')
  module = config_overrides.load_module(config_path)
  if not hasattr(module, 'get_hyper'):
    raise ValueError(
        f'{config_path} defines no get_hyper(hyper), so there is nothing to sweep.'
    )
  points = [
      {_config_key(k): v for k, v in point.items()}
      for point in module.get_hyper(Hyper())
  ]
  if not points:
    raise ValueError(f'get_hyper of {config_path} returned no points.')
  return module.get_config(), points


def _name_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return 'x'.join(str(v) for v in value)
  return str(value)


def point_name(point: dict[str, Any]) -> str:
  """The sub-workdir name of a point, made of its overrides only: 'key=value' joined by ',', each
  key shortened to its last part unless two keys of the point share it, characters other than
  letters, digits and '._=+,-' replaced by '_'; 'base' for no overrides."""
  last = [key.rsplit('.', 1)[-1] for key in point]
  parts = [
      f'{short if last.count(short) == 1 else key}={_name_value(value)}'
      for short, (key, value) in zip(last, point.items())
  ]
  name = re.sub(r'[^A-Za-z0-9._=+,-]', '_', ','.join(parts)) or 'base'
  if (
      len(name) > 200
  ):  # File systems allow 255 bytes; keep it unique with a digest.
    name = f'{name[:180]}-{hashlib.md5(name.encode()).hexdigest()[:8]}'
  return name


def _flag_value(key: str, value: Any) -> str:
  """`value` as main.py's `--config.<key>=` flag parses it back."""
  if value is None:
    raise ValueError(
        f'config.{key}=None cannot be passed as a main.py flag; run the sweep with '
        '--parallel=0 (in this process) instead.'
    )
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return str(value)


def main_command(
    config_path: str, workdir: str, overrides: dict[str, Any]
) -> list[str]:
  """The `python main.py` command line that trains `config_path` with `overrides` in `workdir`."""
  return [
      sys.executable,
      MAIN,
      f'--config={os.path.abspath(config_path)}',
      f'--workdir={os.path.abspath(workdir)}',
  ] + [
      f'--config.{key}={_flag_value(key, value)}'
      for key, value in overrides.items()
  ]


@dataclasses.dataclass(frozen=True)
class Sweep:
  """The points of a sweep config file, with their sub-workdir names and full configs."""

  config_path: str
  # Each point's own overrides, keys without 'config.'.
  points: list[dict[str, Any]]
  # Overrides of every point; a point's own win.
  overrides: dict[str, Any]
  names: list[str]
  configs: list[ml_collections.ConfigDict]

  def overrides_of(self, index: int) -> dict[str, Any]:
    """Every override point `index` trains with."""
    return {**self.overrides, **self.points[index]}


def load(config_path: str, overrides: dict[str, Any] | None = None) -> Sweep:
  """The sweep of the config file at `config_path`, `overrides` applied to every point.

  Raises:
    ValueError: two points share a sub-workdir name, or an override names a key the config
      does not have.
  """
  base, points = load_sweep(config_path)
  overrides = dict(overrides or {})
  names = [point_name(point) for point in points]
  if len(set(names)) < len(names):
    twice = sorted({n for n in names if names.count(n) > 1})[0]
    raise ValueError(
        f'Two sweep points share the sub-workdir name {twice!r}; make their values '
        'differ in letters or digits.'
    )
  configs = [
      config_overrides.apply_overrides(base, {**overrides, **point})
      for point in points
  ]
  return Sweep(config_path, points, overrides, names, configs)


def listing(sweep: Sweep) -> str:
  """What --list prints: the number of points, then `index<TAB>name<TAB>overrides` per point."""
  lines = [str(len(sweep.points))]
  lines += [
      f'{i}\t{name}\t{json.dumps(point)}'
      for i, (name, point) in enumerate(zip(sweep.names, sweep.points))
  ]
  return '\n'.join(lines)


def point_indices(values: Sequence[str], count: int) -> list[int]:
  """The points of `--point=3,7` (each once, in the given order), checked against `count`."""
  for value in values:
    if not value.strip().isdigit() or int(value) >= count:
      raise ValueError(
          f'--point={",".join(values)}: {value!r} is not a point of this sweep; '
          f'use 0 to {count - 1} (--list shows them).'
      )
  return list(dict.fromkeys(int(value) for value in values))


def _train_in_process(sweep: Sweep, index: int, point_dir: str) -> str:
  """Trains point `index` here; returns its status: 'done', 'unfinished' (SIGTERM stopped it) or
  'failed: ...' (any error, recorded in its failed.json; those not in POINT_ERRORS re-raised).
  Only JAX process 0 writes the point's files."""
  chief = jax.process_index() == 0
  if chief:
    sweep_results.record_start(point_dir, index, sweep.overrides_of(index))
  try:
    config_validation.validate(sweep.configs[index])
    results = trainer.train_and_evaluate(sweep.configs[index], point_dir)
  except Exception as error:  # pylint: disable=broad-except
    logging.error('Sweep point %s failed: %s', point_dir, error)
    message = str(error) or type(error).__name__
    if chief:
      sweep_results.record_failure(point_dir, message)
    if isinstance(error, POINT_ERRORS):
      return sweep_results.failed_status(message)
    raise
  return UNFINISHED if 'preempted_at_step' in results else DONE


def _last_line(path: str) -> str:
  with open(path) as f:
    lines = [line.strip() for line in f if line.strip()]
  return lines[-1] if lines else 'no output'


def _train_in_subprocess(
    command: list[str], point_dir: str, env: dict[str, str]
) -> str:
  """Runs one point's main.py command, logging to <point_dir>/log.txt; returns its status."""
  log_path = os.path.join(point_dir, 'log.txt')
  with open(log_path, 'w') as log:
    returncode = subprocess.run(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=os.path.dirname(MAIN),
        check=False,
    ).returncode
  if returncode:
    return sweep_results.record_failure(
        point_dir,
        f'{_last_line(log_path)} (main.py exited with {returncode}; see '
        f'{log_path})',
    )
  return sweep_results.status(point_dir)


def train_points(
    sweep: Sweep, workdir: str, indices: Sequence[int], parallel: int = 0
) -> dict[int, str]:
  """Trains the points `indices` of `sweep` that have not finished, in `<workdir>/<name>`.

  Args:
    sweep: the sweep.
    workdir: the sweep folder.
    indices: the points to train.
    parallel: 0 to train in this process, one point after another (a point stopped by SIGTERM
      stops the rest: the job is ending); N > 0 to run N concurrent main.py processes.

  Returns:
    {index: status} of the points of `indices` that ran or had finished before: 'done',
    'unfinished' or 'failed: why'.
  """
  point_dirs = {i: os.path.join(workdir, sweep.names[i]) for i in indices}
  statuses = {
      i: DONE for i in indices if sweep_results.status(point_dirs[i]) == DONE
  }
  todo = [i for i in indices if i not in statuses]
  logging.info(
      'Sweep of %d points in %s: %d of these %d finished already, %d to train.',
      len(sweep.points),
      workdir,
      len(statuses),
      len(indices),
      len(todo),
  )
  progress = tqdm.tqdm(
      total=len(indices), initial=len(statuses), desc='sweep', unit='point'
  )
  if parallel <= 0:
    for i in todo:
      progress.set_postfix_str(sweep.names[i])
      statuses[i] = _train_in_process(sweep, i, point_dirs[i])
      progress.update()
      if statuses[i] == UNFINISHED:
        break
  else:
    env = dict(os.environ)
    if parallel > 1:
      env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
    commands = {
        i: main_command(sweep.config_path, point_dirs[i], sweep.overrides_of(i))
        for i in todo
    }
    for i in todo:
      sweep_results.record_start(point_dirs[i], i, sweep.overrides_of(i))
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
      futures = {
          pool.submit(_train_in_subprocess, commands[i], point_dirs[i], env): i
          for i in todo
      }
      for future in concurrent.futures.as_completed(futures):
        statuses[futures[future]] = future.result()
        progress.update()
  progress.close()
  return statuses


def collect(
    sweep: Sweep, workdir: str, metrics: Sequence[str] = DEFAULT_METRICS
) -> list[dict[str, Any]]:
  """Writes the sweep's tables from its points as they stand on disk; returns the rows."""
  return sweep_results.collect(workdir, sweep.names, sweep.points, metrics)


def run_sweep(
    config_path: str,
    workdir: str,
    *,
    overrides: dict[str, Any] | None = None,
    parallel: int = 0,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> list[dict[str, Any]]:
  """Checks every point's config, trains every unfinished point and writes the tables.

  Args:
    config_path: a config file with get_config() and get_hyper(hyper).
    workdir: the sweep folder; point workdirs and the tables go there.
    overrides: {dotted key: value} applied to the base config of every point (a point's own
      overrides win).
    parallel: 0 to train in this process, one point after another; N > 0 to run N concurrent
      main.py processes.
    metrics: dotted paths into each point's results.json, e.g. 'test.accuracy'.

  Returns:
    One row per point: its name, overrides, metrics and status ('done', 'unfinished', 'not run'
    or 'failed: why').
  """
  sweep = load(config_path, overrides)
  for name, config in zip(sweep.names, sweep.configs):
    try:
      config_validation.validate(config, num_devices=1)
    except config_validation.ConfigError as error:
      raise ValueError(f'Sweep point {name}: {error}') from error
  os.makedirs(workdir, exist_ok=True)
  train_points(sweep, workdir, range(len(sweep.points)), parallel)
  return collect(sweep, workdir, metrics)


def selection(sweep: Sweep, workdir: str, metric: str) -> str:
  """What --select prints: the best finished point on validation score `metric`, its scores and
  the main.py command that trains it."""
  name, scores = sweep_results.best(workdir, sweep.names, metric)
  point_dir = os.path.join(workdir, name)
  command = main_command(
      sweep.config_path, point_dir, sweep_results.overrides(point_dir)
  )
  finished = sum(
      sweep_results.status(os.path.join(workdir, n)) == DONE
      for n in sweep.names
  )
  return '\n'.join(
      [
          f'Best of {finished}/{len(sweep.names)} finished points on {metric} '
          f'({"lowest" if sweep_results.minimised(metric) else "highest"}): '
          f'{name}',
          sweep_results.scores_text(scores),
          'Trained by (with a fresh --workdir it trains again from scratch):',
          shlex.join(command),
      ]
  )


FLAGS = flags.FLAGS


def _report(rows: list[dict[str, Any]]) -> None:
  """Prints the table of `rows` and names the points that are not done."""
  print(sweep_results.tables(rows)[1])
  missing = sweep_results.summary(rows)
  if missing:
    print(missing)


def _exit_on_statuses(statuses: Iterable[str]) -> None:
  """Ends the program as the points trained by it ended: failed, stopped early, or all done."""
  statuses = list(statuses)
  failed = [s for s in statuses if s.startswith('failed')]
  if failed:
    sys.exit(
        f'error: {len(failed)} sweep point(s) failed; --collect names them.'
    )
  if any(s != DONE for s in statuses):
    logging.warning('Stopped before the end; rerun the same command to resume.')
    sys.exit(PREEMPTED_EXIT_CODE)


def _start_jax(sweep: Sweep, indices: Iterable[int]) -> None:
  """Starts JAX in this process as main.py would for the points `indices`."""
  command_line.start_jax(
      any(sweep.configs[i].get('deterministic') for i in indices)
  )


def _run_of_flags() -> None:
  modes = [
      f'--{name}'
      for name in ('list', 'point', 'collect', 'select', 'parallel')
      if FLAGS[name].value
  ]
  if len(modes) > 1:
    raise ValueError(
        f'{" and ".join(modes)} are separate modes of the sweep; give one of '
        'them.'
    )
  sweep = load(
      config_flags.get_config_filename(FLAGS['config']),
      config_flags.get_override_values(FLAGS['config']),
  )
  if FLAGS.list:
    print(listing(sweep))
  elif FLAGS.collect:
    _report(collect(sweep, FLAGS.workdir, FLAGS.metrics))
  elif FLAGS.select:
    print(selection(sweep, FLAGS.workdir, FLAGS.select))
  elif FLAGS.point:
    indices = point_indices(FLAGS.point, len(sweep.points))
    _start_jax(sweep, indices)
    statuses = train_points(sweep, FLAGS.workdir, indices)
    if jax.process_index() == 0:
      _report(collect(sweep, FLAGS.workdir, FLAGS.metrics))
    _exit_on_statuses(statuses.get(i, UNFINISHED) for i in indices)
  else:
    if not FLAGS.parallel:
      _start_jax(sweep, range(len(sweep.points)))
    rows = run_sweep(
        sweep.config_path,
        FLAGS.workdir,
        overrides=sweep.overrides,
        parallel=FLAGS.parallel,
        metrics=FLAGS.metrics,
    )
    _report(rows)
    _exit_on_statuses(row['status'] for row in rows)


if __name__ == '__main__':
  config_flags.DEFINE_config_file(
      'config',
      None,
      'Sweep config file: get_config() and get_hyper(hyper).',
      lock_config=True,
  )
  flags.DEFINE_string(
      'workdir',
      None,
      'Sweep folder: one sub-workdir per point, and the tables.',
  )
  flags.DEFINE_integer(
      'parallel',
      0,
      '0: train the points one after another in this process; '
      'N: run N main.py processes at a time.',
  )
  flags.DEFINE_list(
      'metrics',
      list(DEFAULT_METRICS),
      'Dotted paths into results.json to tabulate.',
  )
  flags.DEFINE_bool(
      'list', False, 'Print the number of points, then one line per point.'
  )
  flags.DEFINE_list(
      'point',
      [],
      'Train only these points (indices from --list) in this process.',
  )
  flags.DEFINE_bool(
      'collect', False, 'Write the tables from the points that have finished.'
  )
  flags.DEFINE_string(
      'select',
      None,
      'Print the finished point with the best value of this validation score '
      '(e.g. validation.auc; lowest wins for a loss) and its main.py command.',
  )
  command_line.define_process_flags()
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(
      command_line.absl_main(_run_of_flags, ValueError, FileNotFoundError),
      flags_parser=command_line.parse_flags,
  )
