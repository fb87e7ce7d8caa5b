r"""Hyper-parameter sweeps: the points of a config's `get_hyper(hyper)`, each trained in its own
sub-workdir, and one table of chosen metrics per point.

  python -m vivit_flax.sweep --config=configs/organmnist3d/sweep_lr_variant.py \
      --workdir=/tmp/organ_sweep [--parallel=2] [--metrics=test.accuracy,test.auc] \
      [--config.num_training_epochs=10]

Run it from the repository root. A sweep config file defines `get_config()` (the base config) and
`get_hyper(hyper)`, which builds a list of {dotted_key: value} overrides with `hyper.sweep`,
`hyper.product` and `hyper.zipit` (big_vision's convention; keys may start with 'config.').
Extra `--config.key=value` flags apply to every point. Each point trains in `<workdir>/<name>`,
the name made of its overrides only (e.g. `base_learning_rate=0.001,type=spacetime`), so a rerun
finds it again: points whose sub-workdir holds results.json are skipped, others resume from their
newest checkpoint. `--parallel=0` (default) trains the points one after another in this process;
`--parallel=N` runs them as N concurrent `python main.py ... --config.key=value` processes, each
logging to `<sub-workdir>/log.txt` (with N > 1 they share the accelerators: JAX's memory
preallocation is turned off for them unless XLA_PYTHON_CLIENT_PREALLOCATE is set). The table goes
to `<workdir>/results.csv` and `<workdir>/results.md`.
"""

from __future__ import annotations

import concurrent.futures
import csv
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
from typing import Any, Iterable, Sequence

import ml_collections
import tqdm
from absl import app, flags, logging
from ml_collections import config_flags

from vivit_flax import command_line, config_overrides, config_validation, trainer

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


def _finished(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, 'results.json'))


def _train_in_process(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains one point here; returns its status ('done', 'preempted' or 'failed: ...')."""
  try:
    config_validation.validate(config)
    results = trainer.train_and_evaluate(config, workdir)
  except POINT_ERRORS as error:
    logging.error('Sweep point %s failed: %s', workdir, error)
    return f'failed: {error}'
  return 'preempted' if 'preempted_at_step' in results else 'done'


def _train_in_subprocess(
    command: list[str], workdir: str, env: dict[str, str]
) -> str:
  """Runs one point's main.py command, logging to <workdir>/log.txt; returns its status."""
  os.makedirs(workdir, exist_ok=True)
  log_path = os.path.join(workdir, 'log.txt')
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
    return f'failed: main.py exited with {returncode}; see {log_path}'
  return 'done' if _finished(workdir) else 'preempted'


def _metric(results: dict[str, Any], path: str) -> Any:
  node = results
  for part in path.split('.'):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


def _row(
    name: str,
    point: dict[str, Any],
    workdir: str,
    status: str,
    metrics: Sequence[str],
) -> dict[str, Any]:
  results = {}
  if _finished(workdir):
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
  return {
      'name': name,
      **point,
      **{m: _metric(results, m) for m in metrics},
      'status': status,
  }


def write_tables(rows: list[dict[str, Any]], workdir: str) -> tuple[str, str]:
  """Writes the rows as `<workdir>/results.csv` and `<workdir>/results.md`; returns both paths."""
  columns = list(dict.fromkeys(key for row in rows for key in row))
  csv_path, md_path = os.path.join(workdir, 'results.csv'), os.path.join(
      workdir, 'results.md'
  )
  with open(csv_path, 'w', newline='') as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)

  def cell(value):
    if value is None:
      return ''
    text = f'{value:.4g}' if isinstance(value, float) else _name_value(value)
    return text.replace('|', '\\|')

  lines = ['| ' + ' | '.join(columns) + ' |', '|' + ' --- |' * len(columns)]
  lines += [
      '| ' + ' | '.join(cell(row.get(c)) for c in columns) + ' |'
      for row in rows
  ]
  with open(md_path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return csv_path, md_path


def run_sweep(
    config_path: str,
    workdir: str,
    *,
    overrides: dict[str, Any] | None = None,
    parallel: int = 0,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> list[dict[str, Any]]:
  """Trains every unfinished point of the sweep in `config_path` and writes the tables.

  Args:
    config_path: a config file with get_config() and get_hyper(hyper).
    workdir: the sweep folder; point workdirs and the tables go there.
    overrides: {dotted key: value} applied to the base config of every point (a point's own
      overrides win).
    parallel: 0 to train in this process, one point after another; N > 0 to run N concurrent
      main.py processes.
    metrics: dotted paths into each point's results.json, e.g. 'test.accuracy'.

  Returns:
    One row per point: its name, overrides, metrics and status ('done', 'skipped' when it was
    already finished, 'preempted', or 'failed: why').
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
  for name, config in zip(names, configs):
    try:
      config_validation.validate(config, num_devices=1)
    except config_validation.ConfigError as error:
      raise ValueError(f'Sweep point {name}: {error}') from error
  os.makedirs(workdir, exist_ok=True)
  workdirs = [os.path.join(workdir, name) for name in names]
  statuses = ['skipped' if _finished(w) else None for w in workdirs]
  todo = [i for i, status in enumerate(statuses) if status is None]
  logging.info(
      'Sweep of %d points in %s: %d finished already, %d to train.',
      len(points),
      workdir,
      len(points) - len(todo),
      len(todo),
  )
  progress = tqdm.tqdm(
      total=len(points),
      initial=len(points) - len(todo),
      desc='sweep',
      unit='point',
  )
  if parallel <= 0:
    for i in todo:
      progress.set_postfix_str(names[i])
      statuses[i] = _train_in_process(configs[i], workdirs[i])
      progress.update()
  else:
    env = dict(os.environ)
    if parallel > 1:
      env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
    commands = {
        i: main_command(config_path, workdirs[i], {**overrides, **points[i]})
        for i in todo
    }
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
      futures = {
          pool.submit(_train_in_subprocess, commands[i], workdirs[i], env): i
          for i in todo
      }
      for future in concurrent.futures.as_completed(futures):
        statuses[futures[future]] = future.result()
        progress.update()
  progress.close()
  rows = [
      _row(n, p, w, s, metrics)
      for n, p, w, s in zip(names, points, workdirs, statuses)
  ]
  write_tables(rows, workdir)
  return rows


FLAGS = flags.FLAGS


def _run_sweep_of_flags() -> None:
  rows = run_sweep(
      config_flags.get_config_filename(FLAGS['config']),
      FLAGS.workdir,
      overrides=config_flags.get_override_values(FLAGS['config']),
      parallel=FLAGS.parallel,
      metrics=FLAGS.metrics,
  )
  with open(os.path.join(FLAGS.workdir, 'results.md')) as f:
    print(f.read())
  failed = [row['name'] for row in rows if row['status'].startswith('failed')]
  if failed:
    sys.exit(
        f'error: {len(failed)} sweep point(s) failed: {", ".join(failed)}.'
    )


if __name__ == '__main__':
  config_flags.DEFINE_config_file(
      'config',
      None,
      'Sweep config file: get_config() and ' 'get_hyper(hyper).',
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
      'Dotted paths into results.json to ' 'tabulate.',
  )
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(
      command_line.absl_main(_run_sweep_of_flags, ValueError, FileNotFoundError)
  )
