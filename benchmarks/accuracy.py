r"""Accuracy of a recipe over several seeds: each seed trained by its own `python main.py` process
(timed from launch to exit, compilation included), then the mean and standard deviation of the
test and validation scores of the final and of the best-on-validation checkpoints, beside the
trivial baselines' scores on the same data (benchmarks/baselines.py). Each seed's test scores are
then recomputed through `inference.load_predictor(<workdir>/seed_<s>)`, and the run fails if what
it serves differs from what training reported.

  python -m benchmarks.accuracy --config=configs/medmnist3d/vivit_recipe.py:adrenalmnist3d \
      --workdir=/tmp/acc_adrenal --seeds=0,1,2 [--set=model.num_layers=6 ...] [--jobs=2] [--folds=5]

Each seed trains in `<workdir>/seed_<s>`; a seed whose folder holds results.json is read, not
retrained. `--jobs=N` trains N seeds at once, each pinned to its own 1/N of the CPU cores (with
`--cpu_devices` cores/N): faster for ablations, but its wall times are not those of a lone run.
`--folds=k` cross-validates, for choosing recipe-level levers: each (seed, fold) trains in
`<workdir>/seed_<s>/fold_<f>` with config.dataset_configs.num_folds=k and fold=f (train +
validation pooled into k stratified folds, fold f validating; datasets/folds.py), the baselines
are fitted on each fold, and only the validation fold's scores are summarised, over folds and
seeds (--splits is then ignored; the trainer scores no test split in a fold). The
config must declare both keys (placeholder(int)), as configs/medmnist3d/vivit_recipe.py does.
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

from benchmarks import baselines, config_specs
from vivit_flax import datasets, evaluation, inference, sweep

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
flags.DEFINE_integer(
    'folds',
    None,
    'k: k-fold cross-validation on train + validation, each (seed, fold) in'
    ' <workdir>/seed_<s>/fold_<f>; validation scores only.',
    lower_bound=2,
)
flags.mark_flags_as_required(['config', 'workdir'])

# (results.json entry, metric) pairs summarised, in table order.
METRICS = (
    ('test', 'accuracy'),
    ('test', 'balanced_accuracy'),
    ('test', 'auc'),
    ('validation', 'auc'),
)
# Largest difference between a served score and the reported one that counts as the same: float
# rounding of the probabilities, which changes with the batch's shape, can swap a near-tied pair
# (2e-4 of test AUC on the synthetic smoke run of tests/test_accuracy.py); one test volume of a
# set under 1,000 moves accuracy by more than this.
SERVED_TOLERANCE = 1e-3
# With --folds: the held-out fold's scores; the test split is never read.
FOLD_METRICS = (
    ('validation', 'accuracy'),
    ('validation', 'balanced_accuracy'),
    ('validation', 'auc'),
)


def fold_overrides(fold: int | None) -> list[str]:
  """The `key=value` overrides that select cross-validation fold `fold` of --folds (None: none)."""
  if fold is None:
    return []
  return [
      f'dataset_configs.num_folds={FLAGS.folds}',
      f'dataset_configs.fold={fold}',
  ]


def train_seed(
    seed: int, fold: int | None, workdir: str, cores: list[int] | None
) -> dict[str, Any]:
  """Trains one seed (on cross-validation fold `fold`, unless None) with main.py, unless already
  done, and returns its results and wall time."""
  results_path = os.path.join(workdir, 'results.json')
  timing_path = os.path.join(workdir, 'wall_seconds.json')
  if not os.path.exists(results_path):
    os.makedirs(workdir, exist_ok=True)
    command = sweep.main_command(FLAGS.config, workdir, {})
    command += [
        f'--config.{override}' for override in FLAGS.set + fold_overrides(fold)
    ]
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
          f'Seed {seed}{"" if fold is None else f", fold {fold},"} failed '
          f'(exit {returncode}); see {workdir}/log.txt.'
      )
    with open(timing_path, 'w') as f:
      json.dump({'wall_seconds': time.time() - start, 'jobs': FLAGS.jobs}, f)
  with open(results_path) as f:
    results = json.load(f)
  timing = {}
  if os.path.exists(timing_path):
    with open(timing_path) as f:
      timing = json.load(f)
  run = {'seed': seed, 'results': results, **timing}
  if fold is None:
    served = check_served(workdir, results)
    if served is not None:
      run['served'] = served
  else:
    run['fold'] = fold
  return run


def check_served(
    workdir: str, results: dict[str, Any]
) -> dict[str, float] | None:
  """The test AUC and accuracy of `inference.load_predictor(workdir)` (the checkpoint it serves,
  predicted as it serves it); raises if they differ from those training reported for it. None
  when the run kept no checkpoint (config.checkpoint=False): nothing is served.
  """
  config = inference.load_config(workdir)
  if not config.checkpoint:
    return None
  dataset = datasets.get_dataset(config, local_device_count=1)
  images, labels = dataset.arrays('test')
  probabilities = inference.in_batches(
      inference.load_predictor(workdir), images, batch_size=64
  )
  served = {
      'auc': evaluation.medmnist_auc(
          labels, probabilities, dataset.meta_data['task']
      ),
      'accuracy': float(np.mean(probabilities.argmax(-1) == labels)),
  }
  reported = (results.get('best') or results)['test']
  for metric, value in served.items():
    if abs(value - reported[metric]) > SERVED_TOLERANCE:
      raise RuntimeError(
          f'load_predictor({workdir!r}) serves test {metric} {value:.4f}, but'
          f' training reported {reported[metric]:.4f}: the checkpoint or config'
          ' it loads is not the one evaluated.'
      )
  return served


def run_baselines(
    folds: Sequence[int | None],
    splits: Sequence[str],
    metrics: Sequence[tuple[str, str]],
) -> dict[str, Any]:
  """The baselines fitted on the data of each of `folds` (None: the dataset's own splits):
  per baseline, 'scores' (mean and sample std over folds of `metrics` on `splits`) and 'seconds'
  (of each fit)."""
  per_fold = [
      baselines.evaluate(
          config_specs.load_config(FLAGS.config, FLAGS.set + fold_overrides(f)),
          splits,
      )
      for f in folds
  ]
  names = [f'{split}.{metric}' for split, metric in metrics if split in splits]
  return {
      name: {
          'scores': _mean_std(
              [{k: scores[name][k] for k in names} for scores in per_fold]
          ),
          'seconds': [scores[name]['seconds'] for scores in per_fold],
      }
      for name in per_fold[0]
  }


def _scores(
    results: dict[str, Any],
    which: str,
    splits: Sequence[str],
    metrics: Sequence[tuple[str, str]],
) -> dict[str, float]:
  """The `metrics` on `splits` of the final ('final') or best-on-validation ('best') checkpoint."""
  source = (results.get('best') or results) if which == 'best' else results
  return {
      f'{split}.{metric}': float(source[split][metric])
      for split, metric in metrics
      if split in splits and metric in source.get(split, {})
  }


def _mean_std(scores: list[dict[str, float]]) -> dict[str, dict[str, float]]:
  """For each name of `scores[0]`, the mean and sample standard deviation over `scores`."""
  values = {name: np.array([s[name] for s in scores]) for name in scores[0]}
  return {
      name: {
          'mean': float(v.mean()),
          'std': float(v.std(ddof=1)) if len(v) > 1 else 0.0,
      }
      for name, v in values.items()
  }


def summarize(
    runs: list[dict[str, Any]],
    config: str,
    overrides: list[str],
    jobs: int,
    splits: Sequence[str] = ('test', 'validation'),
    metrics: Sequence[tuple[str, str]] = METRICS,
) -> dict[str, Any]:
  """Per-run (seed, and fold with --folds) `metrics` on `splits` and, for each, the mean and
  sample standard deviation over runs."""
  summary = {'config': config, 'overrides': overrides, 'jobs': jobs, 'runs': []}
  for run in runs:
    summary['runs'].append(
        {
            'seed': run['seed'],
            **({'fold': run['fold']} if 'fold' in run else {}),
            'wall_seconds': run.get('wall_seconds'),
            **(
                {'served_test': run['served']}
                if 'served' in run and 'test' in splits
                else {}
            ),
            'final': _scores(run['results'], 'final', splits, metrics),
            'best': _scores(run['results'], 'best', splits, metrics),
        }
    )
  for which in ('final', 'best'):
    summary[which] = _mean_std([r[which] for r in summary['runs']])
  walls = [
      r['wall_seconds']
      for r in summary['runs']
      if r['wall_seconds'] is not None
  ]
  summary['wall_seconds_per_seed'] = walls
  return summary


def _cells(stats: dict[str, dict[str, float]]) -> str:
  """'name mean +- std' for each score of `stats` (name -> {'mean', 'std'})."""
  return ', '.join(
      f'{name} {s["mean"]:.3f} +- {s["std"]:.3f}' for name, s in stats.items()
  )


def format_summary(summary: dict[str, Any]) -> str:
  """The summary as printed: the runs, final and best scores, baselines and wall times."""
  runs = summary['runs']
  seeds = list(dict.fromkeys(r['seed'] for r in runs))
  folds = list(dict.fromkeys(r['fold'] for r in runs if 'fold' in r))
  lines = [
      f'{summary["config"]} {" ".join(summary["overrides"])} seeds {seeds}'
      + (f' x folds {folds}' if folds else '')
      + f' (jobs={summary["jobs"]})'
  ]
  for which in ('final', 'best'):
    lines.append(f'  {which:5s}: {_cells(summary[which])}')
  for name, baseline in summary.get('baselines', {}).items():
    lines.append(
        f'  baseline {name}: {_cells(baseline["scores"])} '
        f'({np.mean(baseline["seconds"]):.1f} s per fit)'
    )
  served = [r for r in runs if 'served_test' in r]
  if served:
    lines.append(
        '  served by load_predictor(seed_<s>), as reported: '
        + ', '.join(
            f'seed {r["seed"]} test AUC {r["served_test"]["auc"]:.3f} ACC'
            f' {r["served_test"]["accuracy"]:.3f}'
            for r in served
        )
    )
  walls = summary['wall_seconds_per_seed']
  if walls:
    lines.append(
        f'  wall time per {"run" if folds else "seed"}: '
        + ', '.join(f'{w / 60:.1f} min' for w in walls)
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
  folds = list(range(FLAGS.folds)) if FLAGS.folds else [None]
  splits, metrics = (
      (['validation'], FOLD_METRICS) if FLAGS.folds else (FLAGS.splits, METRICS)
  )
  # First: seconds, and a config or data problem shows before any training.
  baseline_scores = run_baselines(folds, splits, metrics)
  with concurrent.futures.ThreadPoolExecutor(len(slots)) as pool:

    def job(seed_fold):
      seed, fold = seed_fold
      workdir = os.path.join(FLAGS.workdir, f'seed_{seed}')
      if fold is not None:
        workdir = os.path.join(workdir, f'fold_{fold}')
      slot = free.pop()
      try:
        return train_seed(seed, fold, workdir, slot)
      finally:
        free.append(slot)

    runs = list(pool.map(job, [(s, f) for s in seeds for f in folds]))
  summary = summarize(
      runs, FLAGS.config, FLAGS.set, FLAGS.jobs, splits, metrics
  )
  summary['baselines'] = baseline_scores
  with open(os.path.join(FLAGS.workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  print(format_summary(summary))


if __name__ == '__main__':
  app.run(main)
