"""inference.load_predictor serves what evaluation scored: the moving-average parameters, the
test-time flips, and the best-on-validation checkpoint by default. One in-process run of 12
steps on the smoke config with every one of those options on."""

import json
import os

import jax
import numpy as np
import pytest

from configs.synthetic import vivit_smoke
from vivit_flax import checkpoints, inference, train_utils, trainer
from vivit_flax.datasets import augmentation

STEPS = 12


def _config(data_dir):
  config = vivit_smoke.get_config()
  config.dataset_configs.data_dir = data_dir
  config.num_training_steps = STEPS
  config.log_eval_steps = 4
  config.checkpoint_steps = 4
  config.write_summary = False
  config.ema_decay = 0.9
  config.best_checkpoint_metric = 'accuracy'
  config.tta_flip_axes = (1, 2)
  config.class_weighted_loss = True
  return config


@pytest.fixture(scope='module')
def run(smoke_data_dir, tmp_path_factory):
  """(config, workdir, results) of the run."""
  config = _config(smoke_data_dir)
  workdir = str(tmp_path_factory.mktemp('run'))
  results = trainer.train_and_evaluate(config, workdir)
  return config, workdir, results


def test_predictor_returns_the_probabilities_evaluation_scored(run):
  config, workdir, results = run
  run_trainer = trainer.Trainer(config, workdir)
  state = run_trainer.initial_state()  # The newest checkpoint: the final state.
  assert int(state.step) == STEPS and state.ema_params is not None
  scores, predictions = run_trainer.evaluate(
      train_utils.replicate(state), 'test', STEPS
  )
  assert scores == results['test']
  images, labels = run_trainer.dataset.arrays('test')
  probabilities = inference.load_predictor(workdir, checkpoint='latest')(images)
  np.testing.assert_array_equal(predictions['labels'], labels)
  np.testing.assert_allclose(
      probabilities, predictions['probabilities'], rtol=1e-5, atol=1e-6
  )
  # The moving average, not the parameters, is what is served.
  params, _ = checkpoints.restore_params(workdir, 'latest')
  jax.tree_util.tree_map(
      np.testing.assert_array_equal, params, jax.device_get(state.ema_params)
  )


def test_predictor_serves_raw_parameters_and_other_flips_when_asked(run):
  config, workdir, _ = run
  run_trainer = trainer.Trainer(config, workdir)
  state = run_trainer.initial_state()
  images, _ = run_trainer.dataset.arrays('test')
  raw_no_tta = inference.load_predictor(
      workdir, 'latest', moving_average=False, tta_flip_axes=()
  )(images)
  _, expected = train_utils.predict(
      state.apply_fn,
      jax.device_get(state.params),
      augmentation.as_float_volumes(images),
      (),
  )
  np.testing.assert_allclose(raw_no_tta, expected, rtol=1e-5, atol=1e-6)
  _, expected_shifts = train_utils.predict(
      state.apply_fn,
      jax.device_get(state.params),
      augmentation.as_float_volumes(images),
      (),
      1,
  )
  np.testing.assert_allclose(
      inference.load_predictor(
          workdir, 'latest', moving_average=False, tta_flip_axes=(), tta_shift=1
      )(images),
      expected_shifts,
      rtol=1e-5,
      atol=1e-6,
  )
  default = inference.load_predictor(workdir, 'latest')(images)
  assert not np.allclose(raw_no_tta, default, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(
      inference.load_predictor(
          workdir, 'latest', tta_flip_axes=config.tta_flip_axes
      )(images),
      default,
  )


def test_best_checkpoint_is_kept_reported_and_served_by_default(run):
  config, workdir, results = run
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  best = results['best']
  assert set(best) == {'step', 'validation', 'test'} and best['step'] in (
      4,
      8,
      12,
  )
  assert best['validation']['accuracy'] >= results['validation']['accuracy']
  assert os.listdir(checkpoints.checkpoint_dir(workdir, best=True)) == [
      str(best['step'])
  ]
  images, labels = trainer.Trainer(config, workdir).dataset.arrays('test')
  served = inference.load_predictor(workdir)(images).argmax(-1)
  assert np.mean(served == labels) == pytest.approx(best['test']['accuracy'])
  latest = inference.load_predictor(workdir, checkpoint='latest')(
      images
  ).argmax(-1)
  assert np.mean(latest == labels) == pytest.approx(results['test']['accuracy'])
  with pytest.raises(ValueError, match="'newest'"):
    inference.load_predictor(workdir, checkpoint='newest')


def test_explainer_serves_the_predictors_parameters_and_views(run):
  config, workdir, _ = run
  images, _ = trainer.Trainer(config, workdir).dataset.arrays('test')
  for checkpoint in ('best', 'latest'):
    probabilities, maps = inference.load_explainer(
        workdir, checkpoint, batch_size=8
    )(images)
    np.testing.assert_allclose(
        probabilities,
        inference.load_predictor(workdir, checkpoint)(images),
        rtol=1e-5,
        atol=1e-6,
    )
    assert maps.shape == images.shape[:4]
    # The flips of config.tta_flip_axes move no mass out of the volume.
    np.testing.assert_allclose(maps.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)
  # A volume alone gets the map it gets in a batch of eight (the 'latest' ones above).
  _, alone = inference.load_explainer(workdir, 'latest', batch_size=1)(
      images[3:4]
  )
  np.testing.assert_allclose(alone[0], maps[3], rtol=1e-5, atol=1e-9)
