r"""One cross-validated ablation row against the recipe's own folds: for each seed, each fold's
validation score in the row minus the reference run's on the same (seed, fold), their mean, and in
how many folds the row scored higher. Both are `summary.json`s of `benchmarks/accuracy.py
--folds=k`; a row trained in parts (e.g. `--seeds=0`, then `--seeds=1`) is given as its parts'
summaries, comma-separated. The "minus the recipe, fold by fold" columns of
benchmarks/RESULTS.md come from it.

  python -m benchmarks.compare_folds \
      --reference=benchmarks/results/cv/recipe_six_blocks_seeds01.json --row=/tmp/cv/abl_gap/summary.json
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string(
    'reference', None, "summary.json of the recipe's own folds."
)
flags.DEFINE_list(
    'row',
    None,
    'summary.json of the ablation row, or of its parts (same config and'
    ' overrides, no (seed, fold) twice).',
)
flags.DEFINE_list(
    'metrics',
    ['validation.auc', 'validation.accuracy'],
    "Scores compared, as named in the summaries' runs.",
)
flags.mark_flags_as_required(['reference', 'row'])


def _by_seed_and_fold(
    summary: dict[str, Any], name: str
) -> dict[tuple[int, int], Any]:
  """The final scores of `summary` (the reference or the row, as `name` says) keyed by
  (seed, fold); a summary without folds, or with a (seed, fold) twice, is refused.
  """
  runs = summary['runs']
  if not runs or any('fold' not in run for run in runs):
    raise ValueError(
        f'The {name}, {" ".join([summary["config"], *summary["overrides"]])}:'
        ' not a cross-validated summary (no folds); make both with'
        ' benchmarks/accuracy.py --folds=k.'
    )
  scores = {}
  for run in runs:
    key = (run['seed'], run['fold'])
    if key in scores:
      raise ValueError(
          f'(seed, fold) {key} is in the {name} more than once (a row given'
          ' in parts that overlap?); give each run once.'
      )
    scores[key] = run['final']
  return scores


def merge_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
  """One summary from the summaries of a row trained in parts (their runs concatenated); parts
  of different rows are refused."""
  merged = {**parts[0], 'runs': list(parts[0]['runs'])}
  for part in parts[1:]:
    if (part['config'], part['overrides']) != (
        merged['config'],
        merged['overrides'],
    ):
      raise ValueError(
          f'Parts of different rows: {part["config"]}'
          f' {" ".join(part["overrides"])} and {merged["config"]}'
          f' {" ".join(merged["overrides"])}; give one row\'s parts.'
      )
    merged['runs'] += part['runs']
  return merged


def compare(
    reference: dict[str, Any], row: dict[str, Any], metric: str
) -> dict[str, Any]:
  """`metric` of `row` minus `reference`, per (seed, fold) present in both, grouped by seed, and
  over all paired folds: the mean difference and the number of folds where the row is higher.
  """
  ref = _by_seed_and_fold(reference, 'reference')
  new = _by_seed_and_fold(row, 'row')
  pairs = sorted(set(ref) & set(new))
  if not pairs:
    raise ValueError(
        'The two summaries share no (seed, fold): run the row with the seeds'
        ' and --folds of the reference.'
    )
  for name, scores in (('reference', ref), ('row', new)):
    missing = [p for p in pairs if metric not in scores[p]]
    if missing:
      raise ValueError(
          f'{metric} is missing from the {name} at (seed, fold) {missing[0]};'
          f' it holds {sorted(scores[missing[0]])}.'
      )
  per_seed = {}
  for seed, fold in pairs:
    entry = per_seed.setdefault(seed, {'folds': [], 'row': [], 'delta': []})
    entry['folds'].append(fold)
    entry['row'].append(new[seed, fold][metric])
    entry['delta'].append(new[seed, fold][metric] - ref[seed, fold][metric])
  deltas = np.array([d for e in per_seed.values() for d in e['delta']])
  return {
      'metric': metric,
      'per_seed': per_seed,
      'mean_delta': float(deltas.mean()),
      'higher': int((deltas > 0).sum()),
      'paired': len(deltas),
      'unpaired': sorted((set(ref) | set(new)) - set(pairs)),
  }


def format_comparison(comparison: dict[str, Any]) -> str:
  """The comparison as printed: per seed the row's folds and their differences, then the total."""
  lines = [comparison['metric']]
  for seed, entry in comparison['per_seed'].items():
    lines.append(
        f'  seed {seed} folds {entry["folds"]}: '
        + ', '.join(f'{v:.3f}' for v in entry['row'])
        + f' (mean {np.mean(entry["row"]):.3f} +- '
        + f'{np.std(entry["row"], ddof=1) if len(entry["row"]) > 1 else 0.0:.3f})'
        + '; minus the reference: '
        + ', '.join(f'{d:+.3f}' for d in entry['delta'])
        + f' (mean {np.mean(entry["delta"]):+.3f})'
    )
  lines.append(
      f'  {comparison["paired"]} paired folds: mean'
      f' {comparison["mean_delta"]:+.4f}, row higher in'
      f' {comparison["higher"]} of {comparison["paired"]}'
      + (
          f'; unpaired (seed, fold): {comparison["unpaired"]}'
          if comparison['unpaired']
          else ''
      )
  )
  return '\n'.join(lines)


def main(argv):
  del argv
  with open(FLAGS.reference) as f:
    reference = json.load(f)
  parts = []
  for path in FLAGS.row:
    with open(path) as f:
      parts.append(json.load(f))
  row = merge_parts(parts)
  print(f'{row["config"]} {" ".join(row["overrides"])}')
  print(f'  against {reference["config"]} {" ".join(reference["overrides"])}')
  for metric in FLAGS.metrics:
    print(format_comparison(compare(reference, row, metric)))


if __name__ == '__main__':
  app.run(main)
