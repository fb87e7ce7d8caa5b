"""Tests for vivit_flax.pretrained: ViViT initialisation from small 2D ViT checkpoints written here.

Models are tiny and run eagerly, as in test_model.py.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import serialization, traverse_util

from vivit_flax import model as vivit
from vivit_flax import pretrained

WIDTH, HEADS, MLP, LAYERS, PATCH = 16, 2, 32, 2, 4
INPUT = (4, 8, 8, 1)  # T, H, W, C: a 2x2 patch grid per frame.


def vit_params(seed=0, grid=2, channels=3, token=True, pre_linen=False):
  """Parameters of a 2D ViT in the vision_transformer layout (class token first in the posemb)."""
  rng = np.random.default_rng(seed)

  def draw(*shape):
    return (rng.normal(size=shape) / np.sqrt(shape[0])).astype(np.float32)

  def attention():
    qkv = {
        'kernel': draw(WIDTH, HEADS, WIDTH // HEADS),
        'bias': draw(HEADS, WIDTH // HEADS),
    }
    return {
        'query': qkv,
        'key': dict(qkv),
        'value': dict(qkv),
        'out': {
            'kernel': draw(HEADS, WIDTH // HEADS, WIDTH),
            'bias': draw(WIDTH),
        },
    }

  def norm():
    return {'scale': np.float32(1) + draw(WIDTH), 'bias': draw(WIDTH)}

  names = (
      (
          'LayerNorm_0',
          'MultiHeadDotProductAttention_1',
          'LayerNorm_2',
          'MlpBlock_3',
      )
      if pre_linen
      else pretrained._BLOCK_PARTS
  )
  blocks = {
      f'encoderblock_{i}': dict(
          zip(
              names,
              (
                  norm(),
                  attention(),
                  norm(),
                  {
                      'Dense_0': {
                          'kernel': draw(WIDTH, MLP),
                          'bias': draw(MLP),
                      },
                      'Dense_1': {
                          'kernel': draw(MLP, WIDTH),
                          'bias': draw(WIDTH),
                      },
                  },
              ),
          )
      )
      for i in range(LAYERS)
  }
  params = {
      'embedding': {
          'kernel': draw(PATCH, PATCH, channels, WIDTH),
          'bias': draw(WIDTH),
      },
      'Transformer': {
          **blocks,
          'encoder_norm': norm(),
          'posembed_input': {
              'pos_embedding': draw(1, grid * grid + token, WIDTH)
          },
      },
      'head': {'kernel': draw(WIDTH, 5), 'bias': draw(5)},
  }
  if token:
    params['cls'] = draw(1, 1, WIDTH)
  return params


def write_npz(path, params):
  np.savez(path, **traverse_util.flatten_dict(params, sep='/'))
  return str(path)


def make_config(
    attention='spacetime',
    classifier='token',
    method='3d_conv',
    init='central',
    **init_from,
):
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(
      dict(
          hidden_size=WIDTH,
          num_heads=HEADS,
          mlp_dim=MLP,
          num_layers=LAYERS,
          patches=dict(
              size=(PATCH, PATCH, 1 if method == 'temporal_sampling' else 2)
          ),
          classifier=classifier,
          dropout_rate=0.0,
          attention_dropout_rate=0.0,
          attention_config=dict(type=attention),
          temporal_encoding_config=dict(
              method=method,
              n_sampled_frames=1,
              kernel_init_method=init and f'{init}_frame_initializer',
          ),
          spatial_transformer=dict(
              num_heads=HEADS, mlp_dim=MLP, num_layers=LAYERS
          ),
          temporal_transformer=dict(num_heads=HEADS, mlp_dim=MLP, num_layers=1),
      )
  )
  config.init_from = ml_collections.ConfigDict(init_from)
  return config


def build(config, input_shape=INPUT):
  meta = {'num_classes': 3, 'input_shape': (-1,) + input_shape}
  return vivit.ViViTClassificationModel(config, meta)


def fresh_params(model, input_shape=INPUT):
  """Random parameters of `model` drawn in numpy (cheaper than running Flax's initialisers)."""
  x = jax.ShapeDtypeStruct((1,) + input_shape, jnp.float32)
  shapes = jax.eval_shape(
      lambda v: model.flax_model.init(jax.random.key(1), v, train=False), x
  )
  rng = np.random.default_rng(1)
  return jax.tree_util.tree_map(
      lambda s: rng.normal(size=s.shape).astype(np.float32), shapes['params']
  )


def initialised(config, vit, input_shape=INPUT):
  model = build(config, input_shape)
  return model, pretrained.init_from_vit(
      fresh_params(model, input_shape),
      vit,
      config,
      model.flax_model.token_grid(input_shape[:3]),
  )


def block_part(params, i, name):
  return params['Transformer'][f'encoderblock_{i}'][name]


def assert_tree_equal(a, b):
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_model1_copies_blocks_cls_and_tiles_posemb():
  vit = vit_params()
  _, params = initialised(make_config(positional_embed_size_change='tile'), vit)
  for i in range(LAYERS):
    for part in pretrained._BLOCK_PARTS:
      assert_tree_equal(
          block_part(params, i, part),
          vit['Transformer'][f'encoderblock_{i}'][part],
      )
  assert_tree_equal(
      params['Transformer']['encoder_norm'], vit['Transformer']['encoder_norm']
  )
  np.testing.assert_array_equal(params['cls'], vit['cls'])
  posemb, vit_posemb = (
      params['Transformer']['posembed_input']['pos_embedding'],
      vit['Transformer']['posembed_input']['pos_embedding'],
  )
  assert posemb.shape == (
      1,
      1 + 2 * 4,
      WIDTH,
  )  # class token + 2 time positions x 2x2 grid
  np.testing.assert_array_equal(posemb[0, 0], vit_posemb[0, 0])
  np.testing.assert_array_equal(posemb[0, 1:5], vit_posemb[0, 1:])
  np.testing.assert_array_equal(posemb[0, 5:], vit_posemb[0, 1:])


@pytest.mark.parametrize('init', ['central', 'average'])
def test_patch_kernel_inflation_rule(init):
  vit = vit_params()
  _, params = initialised(make_config(init=init), vit)
  kernel2d = vit['embedding']['kernel'].sum(
      axis=2, keepdims=True
  )  # RGB ViT, grey volumes
  kernel = np.asarray(params['embedding']['kernel'])
  assert kernel.shape == (2, PATCH, PATCH, 1, WIDTH)
  if init == 'central':
    np.testing.assert_array_equal(kernel[1], kernel2d)
    np.testing.assert_array_equal(kernel[0], 0)
  else:
    np.testing.assert_allclose(kernel, np.stack([kernel2d / 2] * 2), rtol=1e-6)
  np.testing.assert_array_equal(
      params['embedding']['bias'], vit['embedding']['bias']
  )


def _static_clip_prelogits(config, vit):
  model, params = initialised(config, vit)
  frame = (
      np.random.default_rng(3)
      .uniform(size=(1, 1) + INPUT[1:])
      .astype(np.float32)
  )
  clip = jnp.asarray(np.repeat(frame, INPUT[0], axis=1))
  apply = jax.jit(
      lambda p, x: model.flax_model.apply(
          {'params': p}, x, train=False, return_prelogits=True
      )
  )
  return apply(params, clip)


def test_inflated_model1_sees_a_static_clip_as_the_vit_sees_a_frame():
  """On a clip of identical frames, tubelets (either inflation rule) with the tiled posemb give
  the features of the 2D model on one frame: duplicating every token leaves attention unchanged.
  """
  vit = vit_params(token=False)
  one_frame = _static_clip_prelogits(
      make_config(classifier='gap', method='temporal_sampling'), vit
  )
  for init in ('central', 'average'):
    tubelets = _static_clip_prelogits(
        make_config(classifier='gap', init=init), vit
    )
    np.testing.assert_allclose(tubelets, one_frame, atol=2e-5)


def test_model3_gets_the_vit_attention_in_space_and_time():
  vit = vit_params()
  model = build(make_config('factorized_self_attention_block', 'gap'))
  fresh = fresh_params(model)
  _, params = initialised(
      make_config('factorized_self_attention_block', 'gap'), vit
  )
  for i in range(LAYERS):
    source = vit['Transformer'][f'encoderblock_{i}']
    for part, vit_part in pretrained._FACTORIZED_BLOCK_SOURCES:
      assert_tree_equal(block_part(params, i, part), source[vit_part])
    assert_tree_equal(
        block_part(params, i, 'LayerNorm_time'),
        block_part(fresh, i, 'LayerNorm_time'),
    )
  assert 'cls' not in params
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (
      1,
      8,
      WIDTH,
  )


def test_model2_initialises_the_spatial_encoder_only():
  vit = vit_params()
  config = make_config('factorized_encoder')
  fresh = fresh_params(build(config))
  _, params = initialised(config, vit)
  assert_tree_equal(
      params['SpatialTransformer']['encoderblock_1'],
      vit['Transformer']['encoderblock_1'],
  )
  np.testing.assert_array_equal(params['cls_SpatialTransformer'], vit['cls'])
  np.testing.assert_array_equal(
      params['SpatialTransformer']['posembed_input']['pos_embedding'],
      vit['Transformer']['posembed_input']['pos_embedding'],
  )
  assert_tree_equal(params['TemporalTransformer'], fresh['TemporalTransformer'])
  np.testing.assert_array_equal(
      params['cls_TemporalTransformer'], fresh['cls_TemporalTransformer']
  )


def test_resize_tile_posemb_to_a_larger_grid():
  vit = vit_params()
  input_shape = (4, 12, 12, 1)  # 3x3 patches per frame, 2 time positions
  _, params = initialised(make_config(), vit, input_shape)
  posemb = np.asarray(params['Transformer']['posembed_input']['pos_embedding'])
  grid = vit['Transformer']['posembed_input']['pos_embedding'][0, 1:].reshape(
      2, 2, WIDTH
  )
  resized = np.asarray(
      jax.image.resize(grid, (3, 3, WIDTH), 'bilinear')
  ).reshape(9, WIDTH)
  assert posemb.shape == (1, 1 + 2 * 9, WIDTH)
  np.testing.assert_allclose(posemb[0, 1:10], resized, rtol=1e-6)
  np.testing.assert_allclose(posemb[0, 10:], resized, rtol=1e-6)
  with pytest.raises(
      pretrained.PretrainedMismatchError, match="'tile' needs them equal"
  ):
    initialised(
        make_config(positional_embed_size_change='tile'), vit, input_shape
    )
  with pytest.raises(
      pretrained.PretrainedMismatchError, match="use 'resize_tile'"
  ):
    initialised(
        make_config(positional_embed_size_change='resize'), vit, input_shape
    )


def test_mismatched_checkpoint_names_the_parameter():
  vit = vit_params()
  vit['Transformer']['encoderblock_1']['MlpBlock_0']['Dense_0']['kernel'] = (
      np.zeros((WIDTH, 8))
  )
  with pytest.raises(
      pretrained.PretrainedMismatchError,
      match=r'encoderblock_1/MlpBlock_0/Dense_0/kernel has shape \(16, 8\)',
  ):
    initialised(make_config(), vit)
  with pytest.raises(
      pretrained.PretrainedMismatchError,
      match='has 2 encoder blocks.*num_layers=2',
  ):
    config = make_config()
    config.model.num_layers = 1
    initialised(config, vit_params())
  with pytest.raises(ValueError, match='kernel_init_method'):
    initialised(make_config(init=None), vit_params())


@pytest.mark.parametrize(
    'checkpoint_format', ['big_vision', 'scenic_msgpack', 'scenic_orbax']
)
def test_apply_init_from_reads_each_format(tmp_path, checkpoint_format):
  vit = vit_params(pre_linen=checkpoint_format == 'big_vision')
  if checkpoint_format == 'big_vision':
    # big_vision layout: posemb at the top level, without a class-token row.
    vit['pos_embedding'] = vit['Transformer'].pop('posembed_input')[
        'pos_embedding'
    ][:, 1:]
    path = write_npz(tmp_path / 'vit.npz', vit)
  elif checkpoint_format == 'scenic_msgpack':
    path = tmp_path / 'checkpoint_1'
    path.write_bytes(
        serialization.msgpack_serialize({'params': vit, 'global_step': 1})
    )
  else:
    path = tmp_path / 'orbax'
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(path, {'optimizer': {'target': vit}})
  config = make_config(
      checkpoint_path=str(path),
      checkpoint_format=checkpoint_format.replace('_msgpack', '').replace(
          '_orbax', ''
      ),
  )
  model = build(config)
  params = pretrained.apply_init_from(model, fresh_params(model))
  reference = vit_params()
  assert_tree_equal(
      block_part(params, 0, 'MultiHeadDotProductAttention_0'),
      reference['Transformer']['encoderblock_0'][
          'MultiHeadDotProductAttention_0'
      ],
  )
  posemb = params['Transformer']['posembed_input']['pos_embedding'][0]
  np.testing.assert_array_equal(
      posemb[1:5],
      reference['Transformer']['posembed_input']['pos_embedding'][0, 1:],
  )
  np.testing.assert_array_equal(
      posemb[0],
      0
      if checkpoint_format == 'big_vision'
      else reference['Transformer']['posembed_input']['pos_embedding'][0, 0],
  )


def test_apply_init_from_without_checkpoint_path_is_identity(tmp_path):
  model = build(make_config())
  params = fresh_params(model)
  assert pretrained.apply_init_from(model, params) is params
  config = make_config(checkpoint_path=str(tmp_path / 'missing.npz'))
  with pytest.raises(FileNotFoundError, match='missing.npz'):
    pretrained.apply_init_from(build(config), params)
