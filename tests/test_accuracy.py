"""benchmarks/accuracy.py: per-seed scores of final and best checkpoints, mean and sample std."""

import numpy as np

from benchmarks import accuracy


def _results(test_auc, best_test_auc):
  scores = lambda auc: {'accuracy': 0.8, 'balanced_accuracy': 0.6, 'auc': auc}
  return {
      'validation': scores(0.8),
      'test': scores(test_auc),
      'best': {
          'step': 10,
          'validation': scores(0.9),
          'test': scores(best_test_auc),
      },
  }


def test_summary_means_and_sample_std_over_seeds():
  runs = [
      {'seed': s, 'results': _results(a, b), 'wall_seconds': 60.0 * (s + 1)}
      for s, (a, b) in enumerate([(0.80, 0.90), (0.84, 0.86), (0.86, 0.88)])
  ]
  summary = accuracy.summarize(runs, 'cfg.py:x', ['a=1'], 1)
  final, best = summary['final']['test.auc'], summary['best']['test.auc']
  assert np.isclose(final['mean'], 0.8333333) and np.isclose(
      final['std'], np.std([0.8, 0.84, 0.86], ddof=1)
  )
  assert np.isclose(best['mean'], 0.88) and np.isclose(best['std'], 0.02)
  assert summary['best']['validation.auc']['mean'] == 0.9
  assert summary['wall_seconds_per_seed'] == [60.0, 120.0, 180.0]
  text = accuracy.format_summary(summary)
  assert (
      'test.auc 0.833 +- 0.031' in text and '1.0 min, 2.0 min, 3.0 min' in text
  )


def test_runs_without_a_best_checkpoint_report_final_scores_as_best():
  results = _results(0.8, 0.9)
  del results['best']
  summary = accuracy.summarize(
      [{'seed': 0, 'results': results}], 'cfg.py', [], 1
  )
  assert summary['best']['test.auc'] == {'mean': 0.8, 'std': 0.0}


def test_validation_only_summary_leaves_the_test_split_out():
  summary = accuracy.summarize(
      [{'seed': 0, 'results': _results(0.8, 0.9)}],
      'cfg.py',
      [],
      1,
      splits=['validation'],
  )
  assert list(summary['final']) == ['validation.auc']
  assert list(summary['best']) == ['validation.auc']
  assert 'test' not in accuracy.format_summary(summary)
