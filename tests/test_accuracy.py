"""benchmarks/accuracy.py: per-seed scores of final and best checkpoints, mean and sample std,
and cross-validation (--folds), whose summary holds validation scores only."""

import json
import os
import subprocess
import sys

import numpy as np

from benchmarks import accuracy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_accuracy(workdir, smoke_data_dir, *flags):
  """benchmarks.accuracy on the synthetic smoke set, a couple of steps per run, seed 0."""
  command = [
      sys.executable,
      '-m',
      'benchmarks.accuracy',
      '--config=configs/synthetic/vivit_smoke.py',
      f'--workdir={workdir}',
      '--seeds=0',
      f'--set=dataset_configs.data_dir={smoke_data_dir}',
      '--set=num_training_steps=2',
      '--set=log_eval_steps=100',
      '--set=write_summary=False',
      *flags,
  ]
  return subprocess.run(
      command, cwd=REPO, capture_output=True, text=True, check=False
  )


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
  served = {
      'auc': 0.8,
      'accuracy': 0.8,
  }  # Checked against results.json, not shown.
  summary = accuracy.summarize(
      [{'seed': 0, 'results': _results(0.8, 0.9), 'served': served}],
      'cfg.py',
      [],
      1,
      splits=['validation'],
  )
  assert list(summary['final']) == ['validation.auc']
  assert list(summary['best']) == ['validation.auc']
  assert 'test' not in accuracy.format_summary(summary)
  assert 'test' not in json.dumps(summary)


def test_fold_summary_never_holds_test_scores():
  runs = [
      {'seed': s, 'fold': f, 'results': _results(0.8, 0.9)}
      for s in (0, 1)
      for f in (0, 1, 2)
  ]
  summary = accuracy.summarize(
      runs, 'cfg.py', [], 1, ['validation'], accuracy.FOLD_METRICS
  )
  assert list(summary['final']) == [
      'validation.accuracy',
      'validation.balanced_accuracy',
      'validation.auc',
  ]
  assert [(r['seed'], r['fold']) for r in summary['runs']][:2] == [
      (0, 0),
      (0, 1),
  ]
  assert summary['best']['validation.auc'] == {'mean': 0.9, 'std': 0.0}
  summary['baselines'] = {
      'random_forest': {
          'scores': {'validation.auc': {'mean': 0.7, 'std': 0.1}},
          'seconds': [1.0, 3.0],
      }
  }
  text = accuracy.format_summary(summary)
  assert 'seeds [0, 1] x folds [0, 1, 2]' in text
  assert 'baseline random_forest: validation.auc 0.700 +- 0.100 (2.0 s' in text
  assert 'test' not in text and 'test' not in json.dumps(summary)


def test_folds_train_each_seed_and_fold_and_summarise_validation_only(
    smoke_data_dir, tmp_path
):
  """benchmarks.accuracy --folds=2 end to end: a few steps per fold on the synthetic set; the
  trainer scores the test split in no fold, neither for the final state nor for the best checkpoint.
  """
  workdir = tmp_path / 'acc'
  flags = ('--folds=2', '--set=best_checkpoint_metric=auc')
  run = _run_accuracy(workdir, smoke_data_dir, *flags)
  assert run.returncode == 0, run.stderr[-3000:]
  # No test score: no 'test.<metric>' (the tmp_path holds 'pytest').
  assert 'x folds [0, 1]' in run.stdout and 'test.' not in run.stdout
  summary = (workdir / 'summary.json').read_text()
  assert 'test.' not in summary and '"test"' not in summary
  assert set(json.loads(summary)['baselines']) == {
      'pca_logistic_regression',
      'random_forest',
  }
  validated = 0
  for fold in (0, 1):
    folder = workdir / 'seed_0' / f'fold_{fold}'
    config = json.loads((folder / 'config.json').read_text())
    assert config['dataset_configs']['num_folds'] == 2
    assert config['dataset_configs']['fold'] == fold
    results = json.loads((folder / 'results.json').read_text())
    validated += results['validation']['num_examples']
    assert 'test' not in results and set(results['best']) == {
        'step',
        'validation',
    }
    assert 'test:' not in (folder / 'log.txt').read_text()
  assert validated == 128 + 40  # The folds share out train + validation.
  log = (workdir / 'seed_0' / 'fold_0' / 'log.txt').stat().st_mtime
  rerun = _run_accuracy(workdir, smoke_data_dir, *flags)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert (
      json.loads((workdir / 'summary.json').read_text())['runs']
      == json.loads(summary)['runs']
  )
  assert (workdir / 'seed_0' / 'fold_0' / 'log.txt').stat().st_mtime == log


def test_seeds_check_that_load_predictor_serves_the_reported_scores(
    smoke_data_dir, tmp_path
):
  """Without --folds each seed's test scores are recomputed through load_predictor, and a
  results.json that the served checkpoint does not reproduce fails the run."""
  workdir = tmp_path / 'acc'
  run = _run_accuracy(workdir, smoke_data_dir)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'served by load_predictor(seed_<s>), as reported: seed 0' in run.stdout
  (served,) = [
      r['served_test']
      for r in json.loads((workdir / 'summary.json').read_text())['runs']
  ]
  results_path = workdir / 'seed_0' / 'results.json'
  results = json.loads(results_path.read_text())
  for metric in ('auc', 'accuracy'):
    assert (
        abs(served[metric] - results['test'][metric])
        <= accuracy.SERVED_TOLERANCE
    )
  results['test']['auc'] = served['auc'] + 0.01
  results_path.write_text(json.dumps(results))
  rerun = _run_accuracy(workdir, smoke_data_dir)
  assert rerun.returncode != 0
  assert (
      'serves test auc' in rerun.stderr and 'training reported' in rerun.stderr
  )
