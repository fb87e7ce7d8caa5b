"""default_config: the defaults a config is laid over, and the names and types it checks."""

import ml_collections
import pytest

from configs.synthetic import vivit_smoke
from vivit_flax import default_config


def _smoke(**top_level):
  """The smoke config with the top-level keys of `top_level` replaced, by values of any type."""
  return ml_collections.ConfigDict(
      vivit_smoke.get_config().to_dict() | top_level
  )


def test_set_keys_win_and_unset_keys_take_their_defaults():
  config = vivit_smoke.get_config()
  merged = default_config.with_defaults(config)
  assert merged.model.hidden_size == config.model.hidden_size
  assert merged.batch_size == config.batch_size
  defaults = default_config.get_config()
  assert 'stem' not in config.model
  assert merged.model.stem.to_dict() == defaults.model.stem.to_dict()
  assert merged.optimizer_configs.beta2 == defaults.optimizer_configs.beta2


def test_the_result_is_locked_and_the_input_untouched():
  config = vivit_smoke.get_config()
  before = config.to_json()
  merged = default_config.with_defaults(config)
  assert config.to_json() == before
  with pytest.raises(AttributeError):
    merged.batch_szie = 8


def test_each_unset_key_is_its_own_reference():
  """Setting one key that defaults to None leaves the others None."""
  defaults = default_config.get_config()
  defaults.eval_batch_size = 4
  assert defaults.eval_batch_size == 4
  assert defaults.log_eval_steps is None
  assert defaults.dataset_configs.num_train is None
  assert defaults.model.spatial_transformer.num_heads is None


@pytest.mark.parametrize(
    'value, kept',
    [(0, 0.0), ([0, 2], (0, 2))],
    ids=['int for a float', 'list for a tuple'],
)
def test_values_of_a_compatible_type_are_converted(value, kept):
  key = 'label_smoothing' if kept == 0.0 else 'tta_flip_axes'
  merged = default_config.with_defaults(_smoke(**{key: value}))
  assert merged[key] == kept and type(merged[key]) is type(kept)


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('tta_shift', None, None),
        ('max_grad_norm', None, None),
        ('stop_on_nan', None, 'config.stop_on_nan must be bool; got None.'),
        (
            'max_checkpoints_to_keep',
            True,
            'config.max_checkpoints_to_keep must be int; got the bool True.',
        ),
        (
            'optimizer_configs',
            0.9,
            'config.optimizer_configs must be a ConfigDict of beta1, beta2',
        ),
        (
            'batch_size',
            None,
            None,
        ),  # Required: reported as missing by validation.
    ],
)
def test_none_is_accepted_only_where_the_default_is_none(key, value, message):
  if message is None:
    default_config.with_defaults(_smoke(**{key: value}))
  else:
    with pytest.raises(ValueError) as info:
      default_config.with_defaults(_smoke(**{key: value}))
    assert message in str(info.value)


def test_scenic_keys_take_any_value():
  config = _smoke()
  config.dataset_configs.base_dir = '/data'
  config.dataset_configs.num_frames = 32
  config.init_from = ml_collections.ConfigDict({'checkpoint_path': '/ckpt'})
  merged = default_config.with_defaults(config)
  assert merged.dataset_configs.num_frames == 32
  assert merged.init_from.checkpoint_path == '/ckpt'


def test_required_keys_exist_and_have_no_default():
  defaults = default_config.get_config()
  for path in default_config.REQUIRED:
    node = defaults
    for part in path.split('.'):
      node = node[part]
    assert node is None or isinstance(node, ml_collections.ConfigDict), path
