r"""Accuracy of a recipe over several seeds: each seed trained by its own `python main.py` process
(timed from launch to exit, compilation included), then the mean and standard deviation of the
test and validation scores of the final and of the best-on-validation checkpoints.

  python -m benchmarks.accuracy --config=configs/medmnist3d/vivit_recipe.py:adrenalmnist3d \
      --workdir=/tmp/acc_adrenal --seeds=0,1,2 [--set=model.num_layers=6 ...] [--jobs=2]

Each seed trains in `<workdir>/seed_<s>`; a seed whose folder holds results.json is read, not
retrained. `--jobs=N` trains N seeds at once, each pinned to its own 1/N of the CPU cores (with
`--cpu_devices` cores/N): faster for ablations, but its wall times are not those of a lone run.
The summary goes to stdout and to `<workdir>/summary.json`.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import time
from typing import Any, Sequence

import numpy as np
from absl import app, flags

from vivit_flax import sweep

FLAGS = flags.FLAGS
flags.DEFINE_string(
    'config', None, 'Config file, with its argument: path.py[:arg].'
)
flags.DEFINE_string(
    'workdir', None, 'Root folder; each seed trains in <workdir>/seed_<s>.'
)
flags.DEFINE_list('seeds', ['0', '1', '2'], 'Values of config.rng_seed.')
flags.DEFINE_multi_string(
    'set', [], 'Config override key=value (as --config.key=value), repeatable.'
)
flags.DEFINE_integer(
    'jobs', 1, 'Seeds trained at once, each on its own share of the CPU cores.'
)
flags.DEFINE_list(
    'splits',
    ['test', 'validation'],
    'Splits summarised; --splits=validation for ablations, whose choices are'
    ' made on validation alone (the test scores stay unread in results.json).',
)
flags.mark_flags_as_required(['config', 'workdir'])

# (results.json entry, metric) pairs summarised, in table order.
METRICS = (
    ('test', 'accuracy'),
    ('test', 'balanced_accuracy'),
    ('test', 'auc'),
    ('validation', 'auc'),
)


def train_seed(
    seed: int, workdir: str, cores: list[int] | None
) -> dict[str, Any]:
  """Trains one seed with main.py (unless already done) and returns its results and wall time."""
  results_path = os.path.join(workdir, 'results.json')
  timing_path = os.path.join(workdir, 'wall_seconds.json')
  if not os.path.exists(results_path):
    os.makedirs(workdir, exist_ok=True)
    command = sweep.main_command(FLAGS.config, workdir, {})
    command += [f'--config.{override}' for override in FLAGS.set]
    command += [f'--config.rng_seed={seed}']
    if cores is not None:
      command = (
          ['taskset', '-c', ','.join(map(str, cores))]
          + command
          + [f'--cpu_devices={len(cores)}']
      )
    start = time.time()
    with open(os.path.join(workdir, 'log.txt'), 'w') as log:
      returncode = subprocess.run(
          command,
          stdout=log,
          stderr=subprocess.STDOUT,
          cwd=os.path.dirname(sweep.MAIN),
          check=False,
      ).returncode
    if returncode or not os.path.exists(results_path):
      raise RuntimeError(
          f'Seed {seed} failed (exit {returncode}); see {workdir}/log.txt.'
      )
    with open(timing_path, 'w') as f:
      json.dump({'wall_seconds': time.time() - start, 'jobs': FLAGS.jobs}, f)
  with open(results_path) as f:
    results = json.load(f)
  timing = {}
  if os.path.exists(timing_path):
    with open(timing_path) as f:
      timing = json.load(f)
  return {'seed': seed, 'results': results, **timing}


def _scores(
    results: dict[str, Any], which: str, splits: Sequence[str]
) -> dict[str, float]:
  """The METRICS on `splits` of the final ('final') or best-on-validation ('best') checkpoint."""
  source = (results.get('best') or results) if which == 'best' else results
  return {
      f'{split}.{metric}': float(source[split][metric])
      for split, metric in METRICS
      if split in splits and metric in source.get(split, {})
  }


def summarize(
    runs: list[dict[str, Any]],
    config: str,
    overrides: list[str],
    jobs: int,
    splits: Sequence[str] = ('test', 'validation'),
) -> dict[str, Any]:
  """Per-seed scores on `splits` and, for each metric, mean and sample standard deviation over seeds."""
  summary = {'config': config, 'overrides': overrides, 'jobs': jobs, 'runs': []}
  for run in runs:
    summary['runs'].append(
        {
            'seed': run['seed'],
            'wall_seconds': run.get('wall_seconds'),
            'final': _scores(run['results'], 'final', splits),
            'best': _scores(run['results'], 'best', splits),
        }
    )
  for which in ('final', 'best'):
    names = summary['runs'][0][which].keys()
    values = {
        name: np.array([r[which][name] for r in summary['runs']])
        for name in names
    }
    summary[which] = {
        name: {
            'mean': float(v.mean()),
            'std': float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        }
        for name, v in values.items()
    }
  walls = [
      r['wall_seconds']
      for r in summary['runs']
      if r['wall_seconds'] is not None
  ]
  summary['wall_seconds_per_seed'] = walls
  return summary


def format_summary(summary: dict[str, Any]) -> str:
  lines = [
      f'{summary["config"]} {" ".join(summary["overrides"])} '
      f'seeds {[r["seed"] for r in summary["runs"]]} (jobs={summary["jobs"]})'
  ]
  for which in ('final', 'best'):
    cells = ', '.join(
        f'{name} {s["mean"]:.3f} +- {s["std"]:.3f}'
        for name, s in summary[which].items()
    )
    lines.append(f'  {which:5s}: {cells}')
  walls = summary['wall_seconds_per_seed']
  if walls:
    lines.append(
        '  wall time per seed: ' + ', '.join(f'{w / 60:.1f} min' for w in walls)
    )
  return '\n'.join(lines)


def main(argv):
  del argv
  seeds = [int(s) for s in FLAGS.seeds]
  cores = sorted(os.sched_getaffinity(0))
  share = len(cores) // FLAGS.jobs if FLAGS.jobs > 1 else 0
  if FLAGS.jobs > 1 and share < 1:
    raise app.UsageError(
        f'--jobs={FLAGS.jobs} exceeds the {len(cores)} CPU cores.'
    )
  slots = (
      [cores[i * share : (i + 1) * share] for i in range(FLAGS.jobs)]
      if share
      else [None]
  )
  free = list(slots)
  with concurrent.futures.ThreadPoolExecutor(len(slots)) as pool:

    def job(seed):
      slot = free.pop()
      try:
        return train_seed(
            seed, os.path.join(FLAGS.workdir, f'seed_{seed}'), slot
        )
      finally:
        free.append(slot)

    runs = list(pool.map(job, seeds))
  summary = summarize(runs, FLAGS.config, FLAGS.set, FLAGS.jobs, FLAGS.splits)
  with open(os.path.join(FLAGS.workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  print(format_summary(summary))


if __name__ == '__main__':
  app.run(main)
