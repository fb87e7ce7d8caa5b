"""config_validation.validate: each kind of bad config fails with a message saying what to change,
and, over configs in and just outside the valid ranges, whatever it accepts builds and trains.
"""

import functools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from configs.medmnist3d import vivit_recipe
from configs.organmnist3d import vivit_keras_baseline
from configs.synthetic import vivit_demo, vivit_smoke
from vivit_flax import config_validation, default_config, model, train_utils
from vivit_flax.config_validation import ConfigError, validate
from vivit_flax.datasets import medmnist3d

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke(**overrides):
  """The smoke config with `overrides` ({'model.hidden_size': 8, ...}), of any type."""
  config = vivit_smoke.get_config().to_dict()
  for path, value in overrides.items():
    *parents, key = path.split('.')
    node = config
    for part in parents:
      node = node[part]
    node[key] = value
  return ml_collections.ConfigDict(config)


def _error(config, num_devices=1):
  with pytest.raises(ConfigError) as info:
    validate(config, num_devices=num_devices)
  return str(info.value)


@pytest.mark.parametrize(
    'get_config', [vivit_smoke.get_config, vivit_demo.get_config]
)
def test_project_configs_pass(get_config):
  validate(get_config(), num_devices=8)


def test_medmnist_config_passes_when_its_file_will_be_downloaded():
  config = vivit_keras_baseline.get_config()
  config.dataset_configs.download = True
  validate(config, num_devices=1)


@pytest.mark.parametrize(
    'name',
    sorted(
        f[:-3]
        for f in os.listdir(os.path.join(REPO, 'configs', 'organmnist3d'))
        if f.endswith('.py') and f != '__init__.py'
    ),
)
def test_every_organmnist3d_config_validates(name):
  """Each shipped experiment builds its model on OrganMNIST3D's shapes (no file needed)."""
  module = __import__(f'configs.organmnist3d.{name}', fromlist=['get_config'])
  config = module.get_config()
  config.dataset_configs.download = True
  validate(config, num_devices=1)


@pytest.mark.parametrize('size', [28, 64])
@pytest.mark.parametrize('name', medmnist3d.NAMES)
def test_medmnist_recipe_validates_for_every_set_and_size(name, size):
  """The recipe, unchanged, builds for each of the six MedMNIST 3D sets at both sizes."""
  config = vivit_recipe.get_config(f'{name},{size}')
  assert (config.dataset_configs.name, config.dataset_configs.size) == (
      name,
      size,
  )
  config.dataset_configs.download = True
  validate(config, num_devices=1)


def test_unknown_keys_suggest_the_intended_key():
  config = _smoke()
  config.batch_szie = 8
  assert (
      'Unknown config key config.batch_szie. Did you mean config.batch_size?'
      in _error(config)
  )
  config = _smoke()
  config.model.hiden_size = 8
  assert 'Did you mean config.model.hidden_size?' in _error(config)
  config = _smoke()
  config.dataset_configs.num_workrs = 2
  assert 'Did you mean config.dataset_configs.num_workers?' in _error(config)


def test_keys_the_dataset_and_model_read_are_known():
  validate(
      _smoke(
          **{
              'dataset_configs.num_workers': 2,
              'model.attention_implementation': 'xla',
              'model.attention_config.attention_order': 'time_space',
          }
      ),
      num_devices=1,
  )


def test_unused_scenic_keys_are_named_in_one_warning(caplog):
  config = _smoke(
      **{
          'dataset_configs.num_test_clips': 4,
          'dataset_configs.do_multicrop_test': False,
          'multicrop_clips_per_device': 2,
          'debug_train': True,
          'debug_eval': False,
          'trainer_name': 'vivit_trainer',
      }
  )
  with caplog.at_level('WARNING'):
    validate(config, num_devices=1)
  warnings = [
      r.getMessage() for r in caplog.records if 'Scenic' in r.getMessage()
  ]
  assert warnings == [
      'These Scenic config keys have no effect in this project and are '
      'ignored: config.dataset_configs.num_test_clips, '
      'config.multicrop_clips_per_device, config.debug_train.'
  ]
  caplog.clear()
  with caplog.at_level('WARNING'):
    validate(_smoke(), num_devices=1)
  assert not [r for r in caplog.records if 'Scenic' in r.getMessage()]


def test_unused_scenic_keys_are_accepted_keys():
  for path in default_config.UNUSED_SCENIC_KEYS:
    node = default_config.get_config()
    for part in path.split('.'):
      node = node[part]


def test_trainer_name_is_the_vivit_trainer():
  assert "config.trainer_name='trainer' is not one of 'vivit_trainer'" in (
      _error(_smoke(trainer_name='trainer'))
  )


@pytest.mark.parametrize(
    'path,value,message',
    [
        ('batch_size', 8.0, 'config.batch_size must be int; got float 8.0.'),
        ('stop_on_nan', 1, 'config.stop_on_nan must be bool; got int 1.'),
        (
            'model.hidden_size',
            True,
            'config.model.hidden_size must be int; got the bool True.',
        ),
        (
            'dataset_configs.num_workers',
            '2',
            'config.dataset_configs.num_workers must be int or None',
        ),
        (
            'model.patches.size',
            (7.0, 7, 7),
            'config.model.patches.size=(7.0, 7, 7) must be ints',
        ),
    ],
)
def test_wrong_types(path, value, message):
  assert message in _error(_smoke(**{path: value}))


@pytest.mark.parametrize(
    'overrides,message',
    [
        ({'model.classifier': 'tokn'}, "Did you mean 'token'?"),
        ({'optimizer': 'adamm'}, "Did you mean 'adam'?"),
        (
            {'model.dropout_rate': 1.0},
            'config.model.dropout_rate=1.0 must be in [0, 1).',
        ),
        (
            {'num_training_steps': 0},
            'config.num_training_steps=0 must be positive.',
        ),
        (
            {'rng_seed': 2**32},
            f'config.rng_seed={2**32} must be in [0, {2**32 - 1}].',
        ),
        (
            {'model.num_heads': 3},
            'config.model.num_heads=3 does not divide hidden_size=32',
        ),
        (
            {
                'model.positional_embedding': 'sinusoidal_3d',
                'model.hidden_size': 4,
                'model.num_heads': 2,
            },
            "config.model.hidden_size=4 must be at least 6 for positional_embedding='sinusoidal_3d'",
        ),
        (
            {'lr_configs.factors': 'constant * cosine_decy'},
            "Unknown learning-rate factor 'cosine_decy'",
        ),
        (
            {
                'model.attention_implementation': 'cudnn',
                'model_dtype_str': 'bfloat16',
            },
            'needs NVIDIA GPUs; this run has cpu devices',
        ),
    ],
)
def test_bad_values(overrides, message):
  assert message in _error(_smoke(**overrides))


def test_missing_key():
  config = _smoke()
  del config['batch_size']
  assert 'config.batch_size is missing; set it in the config file.' in _error(
      config
  )


def test_patches_that_do_not_tile_the_input_name_the_fix():
  message = _error(_smoke(**{'model.patches.size': (7, 5, 7)}))
  assert 'Patch width 5 does not tile the input width 28' in message
  assert (
      'config.model.patches.size' in message
      and 'drop_remainder=True' in message
  )
  assert "dataset_name='synthetic3d' are 28x28x28 volumes" in message
  validate(
      _smoke(
          **{
              'model.patches.size': (7, 5, 7),
              'model.patches.drop_remainder': True,
          }
      ),
      num_devices=1,
  )

  config = vivit_keras_baseline.get_config()
  config.dataset_configs.update(size=64, download=True)
  config.model.patches.update(size=(7, 7, 7), drop_remainder=False)
  message = _error(config)
  assert 'Patch time 7 does not tile the input time 64' in message
  assert "dataset_name='medmnist3d' are 64x64x64 volumes" in message


def test_batch_sizes_must_split_over_the_devices():
  assert (
      'config.batch_size=12 is not divisible by the 8 devices of this run; use a multiple '
      'of 8 such as 8 or 16.'
  ) in _error(_smoke(batch_size=12), num_devices=8)
  assert 'config.eval_batch_size=20 is not divisible' in _error(
      _smoke(eval_batch_size=20), num_devices=8
  )


def test_missing_data_files_fail_with_the_loaders_message(tmp_path):
  config = vivit_keras_baseline.get_config()
  config.dataset_configs.data_dir = str(tmp_path)
  message = _error(config)
  assert f'{tmp_path / "organmnist3d.npz"} does not exist' in message
  assert '--config.dataset_configs.download=True' in message
  assert os.listdir(tmp_path) == []  # Nothing was downloaded.

  config.dataset_configs.name = 'organmnist'
  assert "Unknown MedMNIST 3D set 'organmnist'" in _error(config)

  config = _smoke(dataset_name='npz_video')
  assert 'needs --config.dataset_configs.path=' in _error(config)
  config.dataset_configs.path = str(tmp_path / 'missing.npz')
  assert f'{tmp_path / "missing.npz"} does not exist' in _error(config)


def test_main_rejects_a_bad_config_before_creating_anything(tmp_path):
  workdir, data_dir = tmp_path / 'workdir', tmp_path / 'data'
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run(
      [
          sys.executable,
          os.path.join(REPO, 'main.py'),
          f'--config={os.path.join(REPO, "configs", "synthetic", "vivit_smoke.py")}',
          f'--workdir={workdir}',
          f'--config.dataset_configs.data_dir={data_dir}',
          '--config.model.patches.size=(7,7,5)',
      ],
      env=env,
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 1
  assert 'error: Patch time 5 does not tile the input time 28' in result.stderr
  assert not workdir.exists() and not data_dir.exists()


def test_main_names_an_unknown_command_line_key_in_one_line(tmp_path):
  result = subprocess.run(
      [
          sys.executable,
          os.path.join(REPO, 'main.py'),
          f'--config={os.path.join(REPO, "configs", "synthetic", "vivit_smoke.py")}',
          f'--workdir={tmp_path / "workdir"}',
          '--config.model.hiden_size=64',
      ],
      env=dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2'),
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 1
  assert (
      "--config.model.hiden_size: the config has no key 'hiden_size'. Did you mean "
      "'hidden_size'?"
  ) in result.stderr
  assert (
      'Traceback' not in result.stderr and not (tmp_path / 'workdir').exists()
  )


# Fuzzing: the tiny valid base config below with one to three keys moved to values inside
# their range, several of which clash with another key's value, or just outside it.
_BASE = {
    'model.hidden_size': 8,
    'model.num_heads': 2,
    'model.mlp_dim': 8,
    'model.num_layers': 1,
    'batch_size': 2,
    'eval_batch_size': None,
}
_INSIDE_OUTSIDE = {
    'model.hidden_size': ([12, 4], [0]),  # 4: too narrow for sinusoidal_3d.
    'model.num_heads': ([3], [0]),  # 3 divides hidden_size 12 only.
    'model.patches.size': (
        [(14, 7, 28), (5, 7, 7), (7, 7)],
        [(7, 7, 29), (0, 7, 7)],
    ),
    'model.patches.drop_remainder': ([True], []),  # Makes (5, 7, 7) valid.
    'model.temporal_encoding_config.method': (
        ['temporal_sampling'],
        [],
    ),  # Needs (h, w).
    'model.temporal_encoding_config.n_sampled_frames': ([4], [0, 29]),
    'model.classifier': (['token'], []),  # Not with Models 3 and 4 (next key).
    'model.attention_config.type': (
        ['factorized_self_attention_block', 'factorized_dot_product_attention'],
        [],
    ),  # 4: even heads.
    'model.positional_embedding': (['sinusoidal_3d'], []),
    'model.dropout_rate': ([0.5], [1.0]),
    'batch_size': ([4], [3]),
}
_DEVICES = 2  # The train step is vmapped over 2 stand-in devices, so batch sizes must split.


@st.composite
def _configs(draw):
  paths = draw(
      st.lists(
          st.sampled_from(sorted(_INSIDE_OUTSIDE)),
          min_size=2,
          max_size=4,
          unique=True,
      )
  )
  return _smoke(
      **(
          _BASE
          | {
              path: draw(st.sampled_from(sum(_INSIDE_OUTSIDE[path], [])))
              for path in paths
          }
      )
  )


def _compile_train_step(config):
  """One jitted train step of `config`, on constant parameters, ready to call."""
  vivit = model.get_model_cls(config.model_name)(
      config, {'num_classes': 11, 'input_shape': (-1, 28, 28, 28, 1)}
  )
  learning_rate_fn = train_utils.create_learning_rate_fn(config, 10)
  shapes = jax.eval_shape(
      functools.partial(vivit.flax_model.init, train=False),
      {'params': jax.random.PRNGKey(0)},
      jax.ShapeDtypeStruct((1, 28, 28, 28, 1), jnp.float32),
  )['params']
  state = train_utils.TrainState.create(
      apply_fn=vivit.flax_model.apply,
      tx=train_utils.create_optimizer(config, learning_rate_fn),
      params=jax.tree_util.tree_map(
          lambda s: jnp.full(s.shape, 0.01, s.dtype), shapes
      ),
      rng=jax.random.PRNGKey(config.rng_seed),
  )
  step = jax.vmap(
      functools.partial(
          train_utils.train_step,
          loss_fn=vivit.loss_function,
          metrics_fn=vivit.get_metrics_fn('train'),
          learning_rate_fn=learning_rate_fn,
      ),
      in_axes=(None, 0),
      axis_name=train_utils.AXIS_NAME,
  )
  per_device = config.batch_size // _DEVICES
  batch = {
      'inputs': jnp.zeros((_DEVICES, per_device, 28, 28, 28, 1)),
      'label': jax.nn.one_hot(jnp.zeros((_DEVICES, per_device), jnp.int32), 11),
      'batch_mask': jnp.ones((_DEVICES, per_device)),
  }
  # Optimisation level 0 halves the CPU compile time; the step only has to run.
  compiled = (
      jax.jit(step)
      .lower(state, batch)
      .compile(compiler_options={'xla_backend_optimization_level': 0})
  )
  return functools.partial(compiled, state, batch)


_COMPILED = {}  # config JSON -> its compiled step: the examples repeat configs.


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(_configs())
def test_fuzz_accepted_configs_train_and_rejected_ones_say_why(config):
  try:
    validate(config, num_devices=_DEVICES)
  except ConfigError as error:
    assert str(error)
    return
  key = config.to_json()
  if key not in _COMPILED:
    _COMPILED[key] = _compile_train_step(config)
  _, metrics = _COMPILED[key]()
  loss, count = metrics['loss']
  assert (
      np.isfinite(np.asarray(loss)).all()
      and (np.asarray(count) == config.batch_size).all()
  )


@pytest.mark.parametrize(
    'overrides, message',
    [
        (
            {'tta_flip_axes': (1, 3)},
            r'tta_flip_axes=\(1, 3\) must be distinct volume axes',
        ),
        ({'tta_flip_axes': (2, 2)}, r'tta_flip_axes=\(2, 2\) must be distinct'),
        ({'tta_shift': -1}, r'tta_shift=-1 must be zero or positive'),
        ({'tta_shift': 1.5}, r'tta_shift must be int'),
        (
            {'best_checkpoint_metric': 'los'},
            r"best_checkpoint_metric='los' is not one of",
        ),
        ({'ema_decay': 1.0}, r'ema_decay=1.0 must be in \[0, 1\)'),
        ({'class_weighted_loss': 1}, r'class_weighted_loss must be bool'),
    ],
)
def test_training_options_are_checked(overrides, message):
  assert re.search(message, _error(_smoke(**overrides)))


def test_training_options_pass_when_set():
  validate(
      _smoke(
          tta_flip_axes=(0, 2),
          tta_shift=1,
          best_checkpoint_metric='auc',
          ema_decay=0.999,
          class_weighted_loss=True,
      ),
      num_devices=8,
  )
