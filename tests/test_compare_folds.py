"""benchmarks/compare_folds.py: an ablation row's folds minus the recipe's, paired by (seed, fold)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import compare_folds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _summary(aucs, overrides=(), folds=True):
  """A summary.json of accuracy.py --folds: aucs[(seed, fold)] -> validation AUC."""
  runs = []
  for (seed, fold), auc in aucs.items():
    run = {'seed': seed, 'wall_seconds': 60.0}
    if folds:
      run['fold'] = fold
    run['final'] = {'validation.auc': auc, 'validation.accuracy': auc - 0.1}
    runs.append(run)
  return {'config': 'cfg.py:x', 'overrides': list(overrides), 'runs': runs}


def test_differences_are_paired_by_seed_and_fold_not_by_order():
  rng = np.random.default_rng(0)
  keys = [(s, f) for s in (0, 1) for f in range(5)]
  reference = {k: float(rng.uniform(0.7, 0.9)) for k in keys}
  row = {k: float(rng.uniform(0.7, 0.9)) for k in keys}
  # The row's runs listed in another order than the reference's.
  comparison = compare_folds.compare(
      _summary(reference),
      _summary(dict(reversed(list(row.items())))),
      'validation.auc',
  )
  deltas = [row[k] - reference[k] for k in keys]
  assert comparison['paired'] == 10 and comparison['unpaired'] == []
  assert np.isclose(comparison['mean_delta'], np.mean(deltas))
  assert comparison['higher'] == sum(d > 0 for d in deltas)
  for seed in (0, 1):
    entry = comparison['per_seed'][seed]
    assert entry['folds'] == list(range(5))
    np.testing.assert_allclose(
        entry['delta'], [row[seed, f] - reference[seed, f] for f in range(5)]
    )


def test_folds_missing_from_either_side_are_named_not_paired():
  reference = _summary({(0, 0): 0.80, (0, 1): 0.82, (1, 0): 0.79})
  row = _summary({(0, 0): 0.81, (0, 1): 0.80, (0, 2): 0.85})
  comparison = compare_folds.compare(reference, row, 'validation.auc')
  assert comparison['paired'] == 2 and comparison['higher'] == 1
  assert np.isclose(comparison['mean_delta'], (0.01 - 0.02) / 2)
  assert comparison['unpaired'] == [(0, 2), (1, 0)]
  assert 'unpaired (seed, fold): [(0, 2), (1, 0)]' in (
      compare_folds.format_comparison(comparison)
  )


def test_summaries_without_folds_or_the_metric_are_refused():
  folds = _summary({(0, 0): 0.8})
  with pytest.raises(
      ValueError, match='The row, cfg.py:x: not a cross-validated summary'
  ):
    compare_folds.compare(
        folds, _summary({(0, 0): 0.8}, folds=False), 'validation.auc'
    )
  with pytest.raises(ValueError, match='share no'):
    compare_folds.compare(folds, _summary({(1, 0): 0.8}), 'validation.auc')
  with pytest.raises(
      ValueError, match='test.auc is missing from the reference'
  ):
    compare_folds.compare(folds, folds, 'test.auc')
  with_test = _summary({(0, 0): 0.8})
  with_test['runs'][0]['final']['test.auc'] = 0.8
  with pytest.raises(
      ValueError,
      match=r"missing from the row at \(seed, fold\) \(0, 0\); it holds \['validation",
  ):
    compare_folds.compare(with_test, folds, 'test.auc')
  with pytest.raises(ValueError, match='missing from the reference'):
    compare_folds.compare(folds, with_test, 'test.auc')


def test_a_row_trained_in_parts_is_merged_once():
  whole = {(s, f): 0.7 + 0.01 * (5 * s + f) for s in (0, 1) for f in range(5)}
  seed_0 = _summary({k: v for k, v in whole.items() if k[0] == 0}, ['a=1'])
  seed_1 = _summary({k: v for k, v in whole.items() if k[0] == 1}, ['a=1'])
  merged = compare_folds.merge_parts([seed_0, seed_1])
  reference = _summary({k: 0.8 for k in whole})
  assert compare_folds.compare(
      reference, merged, 'validation.auc'
  ) == compare_folds.compare(
      reference, _summary(whole, ['a=1']), 'validation.auc'
  )
  assert len(seed_0['runs']) == 5  # the first part is not extended in place
  with pytest.raises(ValueError, match='Parts of different rows'):
    compare_folds.merge_parts([seed_0, _summary({(1, 0): 0.8}, ['a=2'])])
  overlapping = compare_folds.merge_parts(
      [seed_0, _summary({(0, 3): 0.8}, ['a=1'])]
  )
  with pytest.raises(
      ValueError, match=r'\(0, 3\) is in the row more than once'
  ):
    compare_folds.compare(reference, overlapping, 'validation.auc')
  with pytest.raises(
      ValueError, match=r'\(0, 3\) is in the reference more than once'
  ):
    compare_folds.compare(overlapping, merged, 'validation.auc')


def test_command_line_prints_each_metric(tmp_path):
  paths = []
  for name, aucs in [
      ('reference', {(0, 0): 0.80, (0, 1): 0.84}),
      ('row_fold_0', {(0, 0): 0.78}),
      ('row_fold_1', {(0, 1): 0.85}),
  ]:
    paths.append(tmp_path / f'{name}.json')
    paths[-1].write_text(json.dumps(_summary(aucs, [f'{name[:3]}=1'])))
  result = subprocess.run(
      [
          sys.executable,
          '-m',
          'benchmarks.compare_folds',
          f'--reference={paths[0]}',
          f'--row={paths[1]},{paths[2]}',  # the row in two parts
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=True,
  )
  assert 'cfg.py:x row=1\n  against cfg.py:x ref=1' in result.stdout
  assert (
      'seed 0 folds [0, 1]: 0.780, 0.850 (mean 0.815 +- 0.049); minus the'
      ' reference: -0.020, +0.010 (mean -0.005)' in result.stdout
  )
  assert '2 paired folds: mean -0.0050, row higher in 1 of 2' in result.stdout
  assert result.stdout.count('paired folds') == 2  # AUC and accuracy
