"""Tests for vivit_flax.masked_pretraining: masks, targets, the visible-only encoder, the
pretraining loop and the fine-tune that starts from it (config.init_from, format 'vivit').
"""

import itertools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.synthetic import vivit_mae_smoke, vivit_smoke
from vivit_flax import checkpoints, config_validation, datasets, inference, masked_pretraining, pretrained, trainer, train_utils

INPUT = (-1, 28, 28, 28, 1)


def mae_config(**model):
  config = vivit_mae_smoke.get_config()
  for key, value in model.items():
    config.model[key] = value
  return config


def build(config, input_shape=INPUT):
  return masked_pretraining.ViViTMaskedAutoencoderModel(
      config, {'num_classes': 2, 'input_shape': input_shape}
  )


@pytest.mark.parametrize('mask_type', ['random', 'tube'])
def test_masks_split_every_example_into_visible_and_masked_tokens(mask_type):
  grid = (3, 4, 5)
  visible, masked = masked_pretraining.sample_token_masks(
      jax.random.PRNGKey(0), 6, grid, 0.75, mask_type
  )
  units = 20 if mask_type == 'tube' else 60
  keep = masked_pretraining.num_visible(units, 0.75)
  per_unit = 3 if mask_type == 'tube' else 1
  assert visible.shape == (6, keep * per_unit)
  assert masked.shape == (6, (units - keep) * per_unit)
  for v, m in zip(np.asarray(visible), np.asarray(masked)):
    assert sorted(np.concatenate([v, m])) == list(range(60))
    assert list(v) == sorted(v) and list(m) == sorted(m)
    if mask_type == 'tube':  # The same spatial positions at every time index.
      spatial = v.reshape(3, -1) % 20
      assert (spatial == spatial[0]).all()
  assert len({tuple(v) for v in np.asarray(visible)}) > 1  # Drawn per example.


def test_tubelet_voxels_are_each_tokens_voxels_in_time_major_order():
  x = np.random.default_rng(0).normal(size=(2, 9, 8, 10, 3)).astype(np.float32)
  grid, footprint = (2, 4, 3), (
      4,
      2,
      3,
  )  # Drops the last depth slice and width voxel.
  got = np.asarray(
      masked_pretraining.tubelet_voxels(jnp.asarray(x), grid, footprint)
  )
  for b, (t, h, w) in itertools.product(range(2), np.ndindex(*grid)):
    token = (t * 4 + h) * 3 + w
    block = x[b, t * 4 : t * 4 + 4, h * 2 : h * 2 + 2, w * 3 : w * 3 + 3]
    np.testing.assert_array_equal(got[b, token], block.reshape(-1))


def test_targets_are_normalised_per_token():
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 7, 20)))
  y = np.asarray(masked_pretraining.normalise(x))
  np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.std(-1), 1.0, atol=1e-3)


def _apply(mae, params, x, rng=1, **kwargs):
  return mae.flax_model.apply(
      {'params': params},
      x,
      train=True,
      rngs={
          'masking': jax.random.PRNGKey(rng),
          'dropout': jax.random.PRNGKey(2),
      },
      **kwargs,
  )


def test_masked_voxels_never_reach_the_encoder():
  """With a convolutional stem (whose 3x3x3 window reaches across token borders), changing every
  voxel of the masked tokens changes neither the encoder's output nor the predictions, and the
  encoder's output has one row per visible token only."""
  config = mae_config(
      stem=ml_collections.ConfigDict(dict(features=(4,), strides=(1,)))
  )
  mae = build(config)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 28, 28, 28, 1))
  params = mae.flax_model.init(
      {'params': jax.random.PRNGKey(0)}, x, train=False
  )['params']
  grid, footprint = mae.token_grid(), mae.flax_model.footprint()

  def run(volumes):
    out, state = _apply(
        mae,
        params,
        volumes,
        capture_intermediates=True,
        mutable=['intermediates'],
    )
    return out, state['intermediates']['Transformer']['__call__'][0]

  out, encoded = run(x)
  keep = masked_pretraining.voxel_keep_mask(
      out['masked_tokens'], grid, footprint, (28, 28, 28)
  )
  assert float(keep.mean()) == pytest.approx(1 - 48 / 64)
  noise = jax.random.uniform(jax.random.PRNGKey(5), x.shape)
  x_changed = x * keep + noise * (1 - keep)
  assert float(jnp.abs(x_changed - x).max()) > 0.5
  out_changed, encoded_changed = run(x_changed)  # The same RNG: the same masks.
  np.testing.assert_array_equal(
      out['masked_tokens'], out_changed['masked_tokens']
  )
  visible = masked_pretraining.num_visible(64, 0.75)
  assert encoded.shape == (2, visible, config.model.hidden_size)
  np.testing.assert_array_equal(encoded, encoded_changed)
  np.testing.assert_array_equal(out['predictions'], out_changed['predictions'])
  # The targets are the masked voxels themselves, so those do change.
  assert not np.allclose(out['targets'], out_changed['targets'])


@pytest.mark.parametrize(
    'attention',
    ['factorized_self_attention_block', 'factorized_dot_product_attention'],
)
def test_factorised_models_pretrain_with_tube_masking(attention):
  config = mae_config(
      attention_config=ml_collections.ConfigDict(dict(type=attention))
  )
  config.masked_feature_loss.mask_type = 'tube'
  masked_pretraining.check_config(config, INPUT)
  mae = build(config)
  x = jnp.zeros((2, 28, 28, 28, 1))
  params = mae.flax_model.init(
      {'params': jax.random.PRNGKey(0)}, x, train=False
  )['params']
  out = _apply(mae, params, x)
  masked_tubes = 16 - masked_pretraining.num_visible(16, 0.75)
  assert out['predictions'].shape == (2, 4 * masked_tubes, 7**3)


@pytest.mark.parametrize('embedding', ['learned_1d', 'sinusoidal_3d'])
def test_decoder_adds_the_configured_position_embedding(embedding):
  config = mae_config()
  config.model.decoder_config.positional_embedding = embedding
  masked_pretraining.check_config(config, INPUT)
  params = build(config).flax_model.init(
      {'params': jax.random.PRNGKey(0)},
      jnp.zeros((1, 28, 28, 28, 1)),
      train=False,
  )['params']
  learned = params['Decoder'].get('posembed_input')
  if embedding == 'learned_1d':  # One vector per place of the 4x4x4 grid.
    width = config.model.decoder_config.hidden_size
    assert learned['pos_embedding'].shape == (1, 64, width)
  else:
    assert learned is None


@pytest.mark.parametrize(
    'change, message',
    [
        (dict(attention='factorized_encoder'), 'Model 2 pools each frame'),
        (dict(attention='factorized_self_attention_block'), "mask_type='tube'"),
        (dict(ratio=1.0), 'must be in (0, 1)'),
        (dict(ratio=0.999), 'at least one must be visible'),
        (dict(mask_type='cube'), 'mask_type'),
        (dict(stem_padding='VALID'), "padding='SAME'"),
        (dict(tokenizer='temporal_sampling'), "method='3d_conv'"),
        (
            dict(decoder_embedding='rotary'),
            'decoder_config.positional_embedding',
        ),
        (dict(decoder_width=6), 'must be a multiple of num_heads=4'),
        (
            dict(
                decoder_width=4,
                decoder_heads=2,
                decoder_embedding='sinusoidal_3d',
            ),
            'config.model.decoder_config.hidden_size=4 must be at least 6',
        ),
    ],
)
def test_configs_masking_cannot_serve_are_refused_saying_why(change, message):
  config = mae_config()
  if 'attention' in change:
    config.model.attention_config.type = change['attention']
  if 'ratio' in change:
    config.masked_feature_loss.token_mask_probability = change['ratio']
  if 'mask_type' in change:
    config.masked_feature_loss.mask_type = change['mask_type']
  if 'stem_padding' in change:
    config.model.stem = ml_collections.ConfigDict(
        dict(features=(4,), strides=(1,), padding='VALID')
    )
  if 'decoder_width' in change:
    config.model.decoder_config.hidden_size = change['decoder_width']
    config.model.decoder_config.num_heads = change.get('decoder_heads', 4)
  if 'decoder_embedding' in change:
    config.model.decoder_config.positional_embedding = change[
        'decoder_embedding'
    ]
  if 'tokenizer' in change:
    config.model.temporal_encoding_config.method = 'temporal_sampling'
    config.model.temporal_encoding_config.n_sampled_frames = 4
    config.model.patches.size = (7, 7)
  with pytest.raises(
      ValueError, match=message.replace('(', r'\(').replace(')', r'\)')
  ):
    masked_pretraining.check_config(config, INPUT)


@pytest.fixture(scope='module')
def pretrained_run(smoke_data_dir, tmp_path_factory):
  """A short masked pretraining of the smoke ViViT, and its validation loss before training."""
  workdir = str(tmp_path_factory.mktemp('mae'))
  config = vivit_mae_smoke.get_config()
  config.dataset_configs.data_dir = smoke_data_dir
  config.num_training_epochs = 4
  run = trainer.Trainer(config, workdir)
  state = train_utils.replicate(run.initial_state())
  before, _ = run.evaluate(state, 'validation', 0)
  results = run.run()
  return workdir, before['loss'], results


def test_pretraining_loss_falls_on_the_synthetic_set(pretrained_run):
  _, before, results = pretrained_run
  assert results['validation']['loss'] < 0.7 * before
  assert results['validation']['num_examples'] == 40
  assert set(results) >= {'validation', 'test', 'steps'}


def finetune_config(smoke_data_dir, checkpoint_path=None):
  config = vivit_smoke.get_config()
  config.dataset_configs.data_dir = smoke_data_dir
  if checkpoint_path:
    config.init_from = ml_collections.ConfigDict(
        dict(checkpoint_path=checkpoint_path, checkpoint_format='vivit')
    )
  return config


def test_finetune_starts_from_the_pretrained_tokeniser_and_encoder(
    pretrained_run, smoke_data_dir, tmp_path
):
  workdir, _, _ = pretrained_run
  source, _ = checkpoints.restore_params(workdir)
  config = finetune_config(smoke_data_dir, workdir)
  params = (
      trainer.Trainer(config, str(tmp_path / 'tuned')).initial_state().params
  )
  fresh = (
      trainer.Trainer(finetune_config(smoke_data_dir), str(tmp_path / 'fresh'))
      .initial_state()
      .params
  )
  for name in pretrained.TRANSFERRED_FROM_RUNS:
    if name not in source:
      continue
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, params[name], source[name]
    )
    assert not all(
        jax.tree_util.tree_leaves(
            jax.tree_util.tree_map(np.array_equal, fresh[name], source[name])
        )
    )
  assert 'Decoder' not in params and 'mask_token' not in params
  np.testing.assert_array_equal(params['output_projection']['kernel'], 0.0)


def test_finetune_of_another_width_names_the_parameter(
    pretrained_run, smoke_data_dir, tmp_path
):
  workdir, _, _ = pretrained_run
  config = finetune_config(smoke_data_dir, workdir)
  config.model.hidden_size = 48
  with pytest.raises(pretrained.PretrainedMismatchError, match='embedding'):
    trainer.Trainer(config, str(tmp_path)).initial_state()


def test_best_checkpoint_metric_is_refused_for_pretraining():
  config = mae_config()
  config.best_checkpoint_metric = 'auc'
  with pytest.raises(ValueError, match='unset config.best_checkpoint_metric'):
    trainer.check_config(config)


def test_one_command_pretrains_then_finetunes_from_it(smoke_data_dir, tmp_path):
  config = finetune_config(smoke_data_dir)
  config.num_training_steps = 4
  pretraining = vivit_mae_smoke.get_config()
  config.init_from = ml_collections.ConfigDict(
      dict(
          masked_pretraining=dict(
              num_training_steps=6,
              masked_feature_loss=pretraining.masked_feature_loss.to_dict(),
              model=dict(
                  decoder_config=pretraining.model.decoder_config.to_dict()
              ),
          )
      )
  )
  config_validation.validate(config)
  results = trainer.train_and_evaluate(config, str(tmp_path))
  stage = tmp_path / 'masked_pretraining'
  with open(stage / 'results.json') as f:
    assert json.load(f)['steps'] == 6
  with open(stage / 'config.json') as f:
    assert json.load(f)['trainer_name'] == masked_pretraining.TRAINER_NAME
  with open(tmp_path / 'config.json') as f:
    init_from = json.load(f)['init_from']
  assert init_from == {
      'checkpoint_path': str(stage),
      'checkpoint_format': 'vivit',
  }
  assert results['steps'] == 4 and 'auc' in results['test']


def test_a_named_checkpoint_path_replaces_the_pretraining_stage(smoke_data_dir):
  config = finetune_config(smoke_data_dir, '/some/run')
  config.init_from.masked_pretraining = ml_collections.ConfigDict(
      dict(num_training_steps=6)
  )
  assert masked_pretraining.pretraining_stage(config, '/w') is None
  del config.init_from['checkpoint_path']
  pretraining, workdir = masked_pretraining.pretraining_stage(config, '/w')
  assert workdir == '/w/masked_pretraining'
  assert pretraining.num_training_steps == 6
  assert pretraining.trainer_name == masked_pretraining.TRAINER_NAME
  assert 'init_from' not in pretraining


def test_unlabeled_files_join_the_training_split_of_pretraining_only(
    smoke_data_dir, tmp_path
):
  volumes = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 28), np.uint8)
  np.savez(tmp_path / 'unlabeled.npz', images=volumes)
  config = vivit_mae_smoke.get_config()
  config.dataset_configs.data_dir = smoke_data_dir
  config.dataset_configs.unlabeled_files = (str(tmp_path / 'unlabeled.npz'),)
  dataset = datasets.get_dataset(config)
  images, _ = dataset.arrays('train')
  assert dataset.meta_data['num_train_examples'] == 128 + 5
  np.testing.assert_array_equal(images[-5:, ..., 0], volumes)
  assert (
      len(dataset.arrays('validation')[1]) == 40
  )  # Evaluation splits unchanged.

  config.trainer_name = 'vivit_trainer'
  with pytest.raises(ValueError, match='only masked pretraining'):
    datasets.get_dataset(config)


@pytest.mark.parametrize(
    'images, message',
    [
        (np.zeros((2, 14, 14, 14), np.uint8), 'resample them'),
        (np.zeros((2, 28, 28, 28), np.float32), 'same type'),
    ],
)
def test_unlabeled_files_of_another_shape_or_type_are_refused(
    smoke_data_dir, tmp_path, images, message
):
  np.savez(tmp_path / 'unlabeled.npz', images=images)
  config = vivit_mae_smoke.get_config()
  config.dataset_configs.data_dir = smoke_data_dir
  config.dataset_configs.unlabeled_files = (str(tmp_path / 'unlabeled.npz'),)
  with pytest.raises(ValueError, match=message):
    datasets.get_dataset(config)


def test_a_pretraining_run_is_not_served_as_a_classifier(pretrained_run):
  workdir, _, _ = pretrained_run
  with pytest.raises(ValueError, match='fine-tune it first'):
    inference.load_predictor(workdir)


def test_reconstruction_floors_of_a_run(pretrained_run):
  from benchmarks import reconstruction_floors  # pylint: disable=g-import-not-at-top

  workdir, _, _ = pretrained_run
  config = inference.load_config(workdir)
  floors = reconstruction_floors.floors(config)
  splits, _ = datasets.load_splits(config)
  volumes = splits['validation'][0].astype(np.float32) / 255.0
  tokens = volumes.reshape(40, 4, 7, 4, 7, 4, 7).transpose(0, 1, 3, 5, 2, 4, 6)
  tokens = tokens.reshape(40, 64, 343)
  std = np.sqrt(tokens.var(-1, keepdims=True) + 1e-6)
  normalised = (tokens - tokens.mean(-1, keepdims=True)) / std
  assert floors['zeros'] == pytest.approx(np.mean(normalised**2), rel=1e-4)
  assert 0 < floors['position_prior'] < floors['zeros']
