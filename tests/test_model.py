"""Tests for vivit_flax.model: every variant runs, parameter counts match a
closed form, factorised attention matches plain jax.numpy math, gradients,
bfloat16, config errors, loss and metrics.

Tiny models are run eagerly (op-by-op): on CPU that is much cheaper than
compiling each variant, and the op cache is shared between tests."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import flax.linen as nn
import numpy as np
import pytest

from vivit_flax import model as vivit

NUM_CLASSES = 7
INPUT = (16, 16, 16, 2)  # T, H, W, C


def make_config(
    attention_type='spacetime',
    classifier='gap',
    method='3d_conv',
    **model_overrides,
):
  """A tiny config with Scenic's keys (hidden 32, 16^3 clips -> 64 tokens)."""
  config = ml_collections.ConfigDict()
  config.model_dtype_str = 'float32'
  config.model = ml_collections.ConfigDict(
      dict(
          hidden_size=32,
          num_heads=4,
          mlp_dim=64,
          num_layers=1,
          patches=dict(
              size=(4, 4) if method == 'temporal_sampling' else (4, 4, 4)
          ),
          classifier=classifier,
          representation_size=None,
          dropout_rate=0.0,
          attention_dropout_rate=0.0,
          attention_config=dict(type=attention_type),
          temporal_encoding_config=dict(method=method, n_sampled_frames=4),
          spatial_transformer=dict(num_heads=4, mlp_dim=64, num_layers=1),
          temporal_transformer=dict(num_heads=4, mlp_dim=64, num_layers=1),
      )
  )
  for key, value in model_overrides.items():
    config.model[key] = value
  return config


def build(config, input_shape=INPUT, num_classes=NUM_CLASSES):
  meta = {'num_classes': num_classes, 'input_shape': (-1,) + tuple(input_shape)}
  return vivit.get_model_cls('vivit_classification')(config, meta)


def random_params(init_fn, *args, seed=0):
  """Random parameters shaped like init_fn(*args)['params'], drawn in numpy.

  Kernels ~ N(0, 1/fan_in), LayerNorm scales ~ 1 + N(0, 0.1^2), everything
  else (biases, position embeddings, class tokens, the otherwise zero head)
  ~ N(0, 0.1^2). Drawing here skips compiling Flax's initialisers for every
  tiny model, which dominates the CPU time of these tests.
  """
  shapes = jax.eval_shape(init_fn, *args)['params']
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    names = [getattr(k, 'key', None) for k in path]
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    if names[-1] == 'kernel':
      per_head = len(names) > 1 and names[-2] in ('query', 'key', 'value')
      fan_in = leaf.shape[0] if per_head else np.prod(leaf.shape[:-1])
      return noise / np.sqrt(fan_in)
    if names[-1] == 'scale':
      return 1.0 + 0.1 * noise
    return 0.1 * noise

  return jax.tree_util.tree_map_with_path(draw, shapes)


def init_params(model, seed=0, input_shape=INPUT):
  """Random parameters for model; the head is non-zero, so logits depend on
  the input."""
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  return random_params(
      lambda v: model.flax_model.init(jax.random.key(0), v, train=False),
      x,
      seed=seed,
  )


def clips(seed=0, batch=2, input_shape=INPUT):
  return jax.random.uniform(jax.random.key(seed), (batch,) + tuple(input_shape))


def valid_combinations():
  for attention, method, classifier in itertools.product(
      vivit.ATTENTION_TYPES, ('3d_conv', 'temporal_sampling'), vivit.CLASSIFIERS
  ):
    if not (
        classifier == 'token' and attention in vivit.TOKENLESS_ATTENTION_TYPES
    ):
      yield attention, method, classifier


@pytest.mark.parametrize(
    'attention,method,classifier', list(valid_combinations())
)
def test_every_variant_runs(attention, method, classifier):
  model = build(make_config(attention, classifier, method))
  params = init_params(model)
  x = clips()
  logits = model.flax_model.apply({'params': params}, x, train=False)
  assert logits.shape == (2, NUM_CLASSES)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  again = model.flax_model.apply({'params': params}, x, train=False)
  np.testing.assert_array_equal(logits, again)
  assert not np.allclose(logits[0], logits[1])  # depends on the input


# ----------------------------------------------------------- parameter counts
def conv_count(kernel_volume, channels, hidden):
  return kernel_volume * channels * hidden + hidden


def block_count(hidden, mlp):
  layer_norms = 2 * (2 * hidden)
  attention = 4 * (hidden * hidden + hidden)  # q, k, v, out
  mlp_block = hidden * mlp + mlp + mlp * hidden + hidden
  return layer_norms + attention + mlp_block


def encoder_count(tokens, hidden, mlp, layers):
  """Learned 1D posemb + blocks + final LayerNorm."""
  return tokens * hidden + layers * block_count(hidden, mlp) + 2 * hidden


def head_count(hidden, classes):
  return hidden * classes + classes


def count_params(model, input_shape):
  shapes = jax.eval_shape(
      lambda x: model.flax_model.init(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32),
  )
  return sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))


def keras_seed_config():
  config = make_config('spacetime', 'gap')
  config.model.update(
      dict(
          hidden_size=128,
          num_heads=8,
          mlp_dim=512,
          num_layers=8,
          positional_embedding='learned_1d',
      )
  )
  config.model.patches = ml_collections.ConfigDict(
      dict(size=(8, 8, 8), drop_remainder=True)
  )
  return config


def test_param_count_keras_seed_model():
  model = build(keras_seed_config(), (28, 28, 28, 1), num_classes=11)
  tokens = (28 // 8) ** 3
  assert tokens == 27
  expected = (
      conv_count(8**3, 1, 128)
      + encoder_count(tokens, 128, 512, 8)
      + head_count(128, 11)
  )
  assert count_params(model, (28, 28, 28, 1)) == expected


def vivit_b_config(attention_type):
  """ViViT-B/16x2, token classifier, as in Scenic's Kinetics configs."""
  config = make_config(attention_type, 'token')
  config.model.update(
      dict(hidden_size=768, num_heads=12, mlp_dim=3072, num_layers=12)
  )
  config.model.patches.size = (16, 16, 2)
  config.model.spatial_transformer.update(
      dict(num_heads=12, mlp_dim=3072, num_layers=12)
  )
  config.model.temporal_transformer.update(
      dict(num_heads=12, mlp_dim=3072, num_layers=4)
  )
  return config


VIVIT_B_INPUT = (32, 224, 224, 3)


def test_param_count_vivit_b_model1():
  t, s = 32 // 2, (224 // 16) ** 2
  expected = (
      conv_count(2 * 16 * 16, 3, 768)
      + 768  # embedding, cls
      + encoder_count(t * s + 1, 768, 3072, 12)
      + head_count(768, 400)
  )
  got = count_params(
      build(vivit_b_config('spacetime'), VIVIT_B_INPUT, 400), VIVIT_B_INPUT
  )
  assert got == expected
  assert 86e6 < got < 89e6


def test_param_count_vivit_b_model2():
  t, s = 32 // 2, (224 // 16) ** 2
  expected = (
      conv_count(2 * 16 * 16, 3, 768)
      + 768
      + encoder_count(s + 1, 768, 3072, 12)  # spatial
      + 768
      + encoder_count(t + 1, 768, 3072, 4)  # temporal
      + head_count(768, 400)
  )
  got = count_params(
      build(vivit_b_config('factorized_encoder'), VIVIT_B_INPUT, 400),
      VIVIT_B_INPUT,
  )
  assert got == expected
  assert got > 100e6


def scenic_k400_model_config(factorised):
  """The model section of Scenic's vivit_base_k400.py /
  vivit_base_factorised_encoder.py, key for key."""
  config = ml_collections.ConfigDict()
  config.model_name = 'vivit_classification'
  config.model = ml_collections.ConfigDict()
  config.model.hidden_size = 768
  config.model.attention_config = ml_collections.ConfigDict()
  config.model.patches = ml_collections.ConfigDict()
  if factorised:
    config.model.attention_config.type = 'factorized_encoder'
    config.model.spatial_transformer = ml_collections.ConfigDict()
    config.model.spatial_transformer.num_heads = 12
    config.model.spatial_transformer.mlp_dim = 3072
    config.model.spatial_transformer.num_layers = 12
    config.model.temporal_transformer = ml_collections.ConfigDict()
    config.model.temporal_transformer.num_heads = 12
    config.model.temporal_transformer.mlp_dim = 3072
    config.model.temporal_transformer.num_layers = 4
  else:
    config.model.attention_config.type = 'spacetime'
    config.model.num_heads = 12
    config.model.mlp_dim = 3072
    config.model.num_layers = 12
  config.model.representation_size = None
  config.model.classifier = 'token'
  config.model.attention_dropout_rate = 0.0
  config.model.dropout_rate = 0.0
  config.model_dtype_str = 'float32'
  config.model.temporal_encoding_config = ml_collections.ConfigDict()
  config.model.temporal_encoding_config.method = '3d_conv'
  config.model.patches.size = (16, 16, 2)
  config.model.temporal_encoding_config.kernel_init_method = (
      'central_frame_initializer'
  )
  config.model.temporal_encoding_config.n_sampled_frames = 16
  return config


@pytest.mark.parametrize('factorised', [False, True])
def test_scenic_k400_config_builds_with_scenic_names(factorised):
  model = vivit.get_model_cls('vivit_classification')(
      scenic_k400_model_config(factorised), {'num_classes': 400}
  )
  shapes = jax.eval_shape(
      lambda x: model.flax_model.init(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct((1,) + VIVIT_B_INPUT, jnp.float32),
  )['params']
  assert shapes['embedding']['kernel'].shape == (2, 16, 16, 3, 768)
  assert shapes['output_projection']['kernel'].shape == (768, 400)
  if factorised:
    assert set(shapes) == {
        'embedding',
        'cls_SpatialTransformer',
        'SpatialTransformer',
        'cls_TemporalTransformer',
        'TemporalTransformer',
        'output_projection',
    }
    assert shapes['SpatialTransformer']['posembed_input'][
        'pos_embedding'
    ].shape == (1, 197, 768)
    assert shapes['TemporalTransformer']['posembed_input'][
        'pos_embedding'
    ].shape == (1, 17, 768)
  else:
    assert set(shapes) == {
        'embedding',
        'cls',
        'Transformer',
        'output_projection',
    }
    block = shapes['Transformer']['encoderblock_11']
    assert set(block) == {
        'LayerNorm_0',
        'MultiHeadDotProductAttention_0',
        'LayerNorm_1',
        'MlpBlock_0',
    }
    assert block['MultiHeadDotProductAttention_0']['query']['kernel'].shape == (
        768,
        12,
        64,
    )


# ---------------------------------- factorised attention vs plain jax.numpy
def plain_layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + 1e-6) * p['scale'] + p['bias']


def plain_projections(x, p):
  """q, k, v of shape [..., heads, depth] from [..., D] tokens."""
  return [
      jnp.einsum('...d,dhk->...hk', x, p[n]['kernel']) + p[n]['bias']
      for n in ('query', 'key', 'value')
  ]


def plain_attention(q, k, v):
  """Softmax attention over axis 1 of [n, L, heads, depth] arrays."""
  logits = jnp.einsum('nqhk,nshk->nhqs', q, k) / np.sqrt(q.shape[-1])
  return jnp.einsum('nhqs,nshk->nqhk', jax.nn.softmax(logits, -1), v)


def over_time(fn, *grids):
  """Applies fn to [B*S, T, ...] sequences made from [B, T, S, ...] grids."""
  b, t, s = grids[0].shape[:3]
  seqs = [
      jnp.swapaxes(g, 1, 2).reshape((b * s, t) + g.shape[3:]) for g in grids
  ]
  out = fn(*seqs)
  return jnp.swapaxes(out.reshape((b, s, t) + out.shape[2:]), 1, 2)


def over_space(fn, *grids):
  """Applies fn to [B*T, S, ...] sequences made from [B, T, S, ...] grids."""
  b, t, s = grids[0].shape[:3]
  out = fn(*[g.reshape((b * t, s) + g.shape[3:]) for g in grids])
  return out.reshape((b, t, s) + out.shape[2:])


def plain_mlp(x, p):
  h = x @ p['Dense_0']['kernel'] + p['Dense_0']['bias']
  h = 0.5 * h * (1 + jnp.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
  return h @ p['Dense_1']['kernel'] + p['Dense_1']['bias']


def plain_out(o, p):
  return jnp.einsum('...hk,hkd->...d', o, p['kernel']) + p['bias']


def block_and_input(attention, heads=4):
  block = vivit.EncoderBlock(mlp_dim=64, num_heads=heads, attention=attention)
  x = jax.random.normal(jax.random.key(3), (2, 4, 16, 32))  # B, T, S, D
  params = random_params(
      lambda v: block.init(jax.random.key(0), v, deterministic=True), x
  )
  out = block.apply({'params': params}, x, deterministic=True)
  return params, x, out


@pytest.mark.parametrize('order', [('time', 'space'), ('space', 'time')])
def test_model3_block_matches_plain_math(order):
  params, x, out = block_and_input(order)
  want = x
  for axis in order:
    p = params[f'MultiHeadDotProductAttention_{axis}']
    q, k, v = plain_projections(
        plain_layer_norm(want, params[f'LayerNorm_{axis}']), p
    )
    attend = over_time if axis == 'time' else over_space
    want = want + plain_out(attend(plain_attention, q, k, v), p['out'])
  want = want + plain_mlp(
      plain_layer_norm(want, params['LayerNorm_mlp']), params['MlpBlock']
  )
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)


def test_model4_block_matches_plain_math():
  params, x, out = block_and_input('factorized_heads')
  p = params['MultiHeadDotProductAttention_0']
  q, k, v = plain_projections(plain_layer_norm(x, params['LayerNorm_0']), p)
  half = q.shape[-2] // 2
  first, second = slice(None, half), slice(half, None)
  time_heads = over_time(
      plain_attention, q[..., first, :], k[..., first, :], v[..., first, :]
  )
  space_heads = over_space(
      plain_attention, q[..., second, :], k[..., second, :], v[..., second, :]
  )
  want = x + plain_out(jnp.concatenate([time_heads, space_heads], -2), p['out'])
  want = want + plain_mlp(
      plain_layer_norm(want, params['LayerNorm_1']), params['MlpBlock_0']
  )
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)


def test_model1_block_matches_plain_math():
  params, x, _ = block_and_input('tokens')
  tokens = x.reshape(2, 64, 32)
  out = vivit.EncoderBlock(mlp_dim=64, num_heads=4).apply(
      {'params': params}, tokens, deterministic=True
  )
  p = params['MultiHeadDotProductAttention_0']
  q, k, v = plain_projections(
      plain_layer_norm(tokens, params['LayerNorm_0']), p
  )
  want = tokens + plain_out(plain_attention(q, k, v), p['out'])
  want = want + plain_mlp(
      plain_layer_norm(want, params['LayerNorm_1']), params['MlpBlock_0']
  )
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)


def test_map_head_matches_plain_math():
  head = vivit.MAPHead(num_heads=4, mlp_dim=64)
  x = jax.random.normal(jax.random.key(5), (2, 9, 32))
  params = random_params(lambda v: head.init(jax.random.key(0), v), x)
  out = head.apply({'params': params}, x)
  p = params['MultiHeadDotProductAttention_0']
  probe = jnp.broadcast_to(params['probe'], (2, 1, 32))
  q = plain_projections(probe, p)[0]
  _, k, v = plain_projections(x, p)
  pooled = plain_out(plain_attention(q, k, v), p['out'])
  want = pooled + plain_mlp(
      plain_layer_norm(pooled, params['LayerNorm_0']), params['MlpBlock_0']
  )
  np.testing.assert_allclose(out, want[:, 0], atol=1e-5, rtol=1e-5)
  shuffled = head.apply({'params': params}, x[:, ::-1])  # Order-free pooling.
  np.testing.assert_allclose(shuffled, out, atol=1e-5, rtol=1e-5)


def test_conv_stem_matches_lax_convolution_and_sets_the_token_grid():
  config = make_config(
      stem=dict(features=(8, 16), strides=(1, 2)), patches=dict(size=(2, 2, 2))
  )
  model = build(config)
  assert model.flax_model.token_grid(INPUT[:3]) == (4, 4, 4)
  params = init_params(model)
  x = clips()
  stem = params['stem']
  want = x
  for i, stride in enumerate((1, 2)):
    want = jax.lax.conv_general_dilated(
        want,
        stem[f'conv_{i}'],
        (stride,) * 3,
        'SAME',
        dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'),
    )
    want = jax.nn.relu(want + stem[f'bias_{i}'])
  got = vivit.ConvStem((8, 16), (1, 2)).apply({'params': stem}, x)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  assert model.flax_model.apply({'params': params}, x, train=False).shape == (
      2,
      NUM_CLASSES,
  )


def test_valid_stem_with_a_larger_kernel_matches_lax_convolution():
  config = make_config(
      stem=dict(features=(4,), strides=(1,), kernel_size=5, padding='VALID'),
      patches=dict(size=(2, 2, 2)),
  )
  model = build(config)
  t, h, w = INPUT[:3]
  assert model.flax_model.token_grid((t, h, w)) == (
      (t - 4) // 2,
      (h - 4) // 2,
      (w - 4) // 2,
  )
  params = init_params(model)
  x = clips()
  stem = params['stem']
  assert stem['conv_0'].shape == (5, 5, 5, x.shape[-1], 4)
  want = jax.lax.conv_general_dilated(
      x,
      stem['conv_0'],
      (1, 1, 1),
      'VALID',
      dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'),
  )
  got = vivit.ConvStem((4,), (1,), 5, 'VALID').apply({'params': stem}, x)
  np.testing.assert_allclose(
      got, jax.nn.relu(want + stem['bias_0']), atol=1e-4, rtol=1e-4
  )
  with pytest.raises(
      ValueError, match="stem.padding='valid' is not one of 'SAME', 'VALID'"
  ):
    build(make_config(stem=dict(features=(4,), strides=(1,), padding='valid')))


def test_stem_stride_that_does_not_divide_the_input_is_refused():
  config = make_config(stem=dict(features=(8,), strides=(3,)))
  with pytest.raises(ValueError, match='stem.strides'):
    build(config)
  with pytest.raises(ValueError, match='one entry per convolution'):
    build(make_config(stem=dict(features=(8, 8), strides=(1,))))


# ------------------------------------------------------- information flow
def test_factorised_encoder_spatial_stage_sees_one_time_index():
  model = build(make_config('factorized_encoder', 'gap'))
  params = init_params(model)
  x = clips()
  x2 = x.at[:, 9].add(1.0)  # frame 9 lies in tubelet 9 // 4 = 2

  def spatial_tokens(inputs):
    _, state = model.flax_model.apply(
        {'params': params},
        inputs,
        train=False,
        mutable=['intermediates'],
        capture_intermediates=lambda m, _: m.name == 'SpatialTransformer',
    )
    out = state['intermediates']['SpatialTransformer']['__call__'][0]
    return out.reshape(2, 4, -1)  # [B, time index, tokens * D]

  diff = np.abs(spatial_tokens(x2) - spatial_tokens(x)).max(axis=(0, 2))
  assert diff[2] > 1e-3
  np.testing.assert_array_equal(np.delete(diff, 2), 0.0)


def test_temporal_sampling_ignores_unsampled_frames():
  model = build(make_config('spacetime', 'gap', 'temporal_sampling'))
  params = init_params(model)
  x = clips()
  apply = lambda v: model.flax_model.apply({'params': params}, v, train=False)
  base = apply(x)
  # 4 of 16 frames: round(3.2 * i) for i = 1..4 -> frames 3, 6, 10, 13.
  np.testing.assert_array_equal(apply(x.at[:, 0].add(1.0)), base)
  assert np.abs(apply(x.at[:, 10].add(1.0)) - base).max() > 1e-4


def test_keras_seed_drops_remainder_to_27_tokens():
  model = build(keras_seed_config(), (28, 28, 28, 1), num_classes=11)
  assert model.flax_model.token_grid((28, 28, 28)) == (3, 3, 3)


def test_stochastic_depth_grows_linearly_to_the_last_layer():
  # Rate 1 over 2 layers: layer 0 never drops, layer 1 always drops, so
  # training output equals a 1-layer model with the same first block.
  config = make_config(
      'spacetime', 'gap', num_layers=2, stochastic_droplayer_rate=1.0
  )
  params = init_params(build(config))
  x = clips()
  train_out = build(config).flax_model.apply(
      {'params': params}, x, train=True, rngs={'dropout': jax.random.key(0)}
  )
  one_layer = dict(params)
  one_layer['Transformer'] = {
      k: v for k, v in params['Transformer'].items() if k != 'encoderblock_1'
  }
  eval_out = build(make_config('spacetime', 'gap')).flax_model.apply(
      {'params': one_layer}, x, train=False
  )
  np.testing.assert_allclose(train_out, eval_out, atol=1e-6)


@pytest.mark.parametrize('cpu_fast_layers', [False, True])
def test_dropout_uses_the_dropout_rng(cpu_fast_layers):
  config = make_config(
      'spacetime',
      'gap',
      dropout_rate=0.2,
      attention_dropout_rate=0.2,
      cpu_fast_layers=cpu_fast_layers,
  )
  model = build(config)
  params = init_params(model)
  x = clips()
  train = jax.jit(
      lambda key: model.flax_model.apply(
          {'params': params}, x, train=True, rngs={'dropout': key}
      )
  )
  run = lambda seed: train(jax.random.key(seed))
  np.testing.assert_array_equal(run(0), run(0))
  assert not np.allclose(run(0), run(1))
  assert not np.allclose(
      run(0), model.flax_model.apply({'params': params}, x, train=False)
  )


# ------------------------------------------------------ CPU-tuned layers
def test_cpu_fast_layers_default_to_cpu_hosts_and_can_be_set():
  default = build(make_config()).flax_model.cpu_fast_layers
  assert default == (jax.default_backend() == 'cpu')
  for value in (False, True):
    config = make_config(cpu_fast_layers=value)
    assert build(config).flax_model.cpu_fast_layers is value


@pytest.mark.parametrize('method', ['3d_conv', 'temporal_sampling'])
def test_fast_patch_embedding_matches_nn_conv(method):
  """Same parameters (names, shapes, initial values) and, within float32
  rounding, the same tokens, gradients and logits as the stock nn.Conv."""
  stock, fast = (
      build(make_config(method=method, cpu_fast_layers=v)).flax_model
      for v in (False, True)
  )
  x = clips()
  init = lambda m: jax.jit(lambda v: m.init(jax.random.key(0), v, train=False))
  jax.tree_util.tree_map(
      np.testing.assert_array_equal, init(stock)(x), init(fast)(x)
  )
  params = init_params(build(make_config(method=method)))
  logits = lambda m: m.apply({'params': params}, x, train=False)
  np.testing.assert_allclose(logits(fast), logits(stock), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    'patch, kernel_dims', [((4, 4, 4), 3), ((4, 7, 5), 3), ((1, 7, 5), 2)]
)
def test_fast_patch_embedding_layer_equals_a_strided_convolution(
    patch, kernel_dims
):
  """The layer alone against the VALID nn.Conv with stride = kernel = patch
  (2D patches: the convolution applied to every frame), on 13x14x15 clips whose
  trailing voxels are dropped: same tokens, and the same gradients with respect
  to the parameters and the input."""
  window = patch[3 - kernel_dims :]
  conv = nn.Conv(32, window, strides=window, padding='VALID')
  fast_conv = vivit.FastPatchEmbedding(32, patch, kernel_dims=kernel_dims)
  x = clips(input_shape=(13, 14, 15, 2))
  variables = random_params(
      conv.init, jax.random.key(0), x if kernel_dims == 3 else x[:, 0]
  )

  def apply(layer, p, v):
    if layer is fast_conv or kernel_dims == 3:
      return layer.apply({'params': p}, v)
    y = conv.apply({'params': p}, v.reshape((-1,) + v.shape[2:]))
    return y.reshape(v.shape[:2] + y.shape[1:])

  def value_and_grads(layer):
    return jax.jit(
        jax.value_and_grad(
            lambda p, v: jnp.sum(jnp.sin(apply(layer, p, v))), argnums=(0, 1)
        )
    )(variables, x)

  tokens = apply(fast_conv, variables, x)
  assert tokens.shape == (2, 13 // patch[0], 14 // patch[1], 15 // patch[2], 32)
  np.testing.assert_allclose(
      tokens, apply(conv, variables, x), rtol=1e-5, atol=1e-5
  )
  (want, want_grads), (got, got_grads) = map(value_and_grads, (conv, fast_conv))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
      got_grads,
      want_grads,
  )


@pytest.mark.parametrize('rate', [0.1, 0.5])
def test_fast_dropout_keeps_as_often_as_nn_dropout(rate):
  """Over 2^20 elements the kept fraction of each is 1 - rate within 5
  standard errors, and kept elements are scaled by 1 / (1 - rate)."""
  x = jnp.ones((1024, 1024))
  for layer in (nn.Dropout(rate), vivit.FastDropout(rate)):
    y = np.asarray(
        layer.apply(
            {}, x, deterministic=False, rngs={'dropout': jax.random.key(3)}
        )
    )
    kept = y != 0
    tolerance = 5 * np.sqrt(rate * (1 - rate) / kept.size)
    assert abs(kept.mean() - (1 - rate)) < tolerance, type(layer).__name__
    np.testing.assert_allclose(y[kept], 1 / (1 - rate), rtol=1e-5)
    assert (layer.apply({}, x, deterministic=True) == x).all(), type(
        layer
    ).__name__


def test_return_prelogits_and_representation():
  config = make_config('spacetime', 'token', representation_size=12)
  model = build(config)
  params = init_params(model)
  x = clips()
  pre = model.flax_model.apply(
      {'params': params}, x, train=False, return_prelogits=True
  )
  assert pre.shape == (2, 12) and np.all(np.abs(pre) <= 1)  # tanh
  config.model.return_prelogits = True
  same = build(config).flax_model.apply({'params': params}, x, train=False)
  np.testing.assert_array_equal(pre, same)


def test_init_variables_zero_head_float32_params():
  config = make_config(hidden_size=8, num_heads=2, mlp_dim=8)
  config.model.patches.size = (2, 2, 2)
  config.model_dtype_str = 'bfloat16'
  model = build(config, input_shape=(4, 4, 4, 1))
  params = model.init_variables(jax.random.key(0))['params']
  np.testing.assert_array_equal(params['output_projection']['kernel'], 0.0)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))


# ------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    'attention,classifier',
    [
        ('spacetime', 'token'),
        ('factorized_encoder', 'token'),
        ('factorized_self_attention_block', 'gap'),
        ('factorized_dot_product_attention', 'gap'),
    ],
)
def test_gradients_reach_every_parameter(attention, classifier):
  """Every parameter gets a gradient, except the attention key biases: adding
  a constant to all logits of a query leaves its softmax unchanged, so their
  gradient is zero by design (only rounding noise remains). The
  zero-initialised head would block all upstream gradients at init;
  init_params gives it random weights."""
  model = build(make_config(attention, classifier, representation_size=16))
  params = init_params(model)
  x = clips()
  labels = jax.nn.one_hot(jnp.array([1, 4]), NUM_CLASSES)

  def loss(p):
    logits = model.flax_model.apply({'params': p}, x, train=False)
    return model.loss_function(
        logits, {'label': labels, 'batch_mask': jnp.ones(2)}
    )

  grads = jax.jit(jax.grad(loss))(params)
  norms = {
      jax.tree_util.keystr(path): float(np.linalg.norm(g))
      for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]
  }
  key_biases = {k for k in norms if k.endswith("['key']['bias']")}
  assert key_biases
  for k in key_biases:
    query_bias = k.replace("['key']", "['query']")
    assert norms[k] < 1e-4 * norms[query_bias], k
  scale = max(norms.values())
  dead = [
      k for k, n in norms.items() if k not in key_biases and n < 1e-6 * scale
  ]
  assert not dead


# --------------------------------------------------------------- bfloat16
@pytest.mark.parametrize(
    'attention', ['spacetime', 'factorized_dot_product_attention']
)
def test_bfloat16_close_to_float32(attention):
  config = make_config(attention, 'gap', num_layers=2)
  params = init_params(build(config))
  config.model_dtype_str = 'bfloat16'
  bf16 = build(config)
  x = clips()
  want = build(make_config(attention, 'gap', num_layers=2)).flax_model.apply(
      {'params': params}, x, train=False
  )
  got = bf16.flax_model.apply({'params': params}, x, train=False)
  assert got.dtype == jnp.float32
  assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-2


# ----------------------------------------------------------------- errors
ERROR_CASES = {
    'unknown attention': (
        dict(attention_type='axial'),
        ['attention_config.type', "'axial'"],
    ),
    'unknown classifier': (
        dict(classifier='cls'),
        ['config.model.classifier', "'cls'", 'gap'],
    ),
    'token with model 3': (
        dict(
            attention_type='factorized_self_attention_block', classifier='token'
        ),
        ["classifier='token' is not supported", 'gap'],
    ),
    'token with model 4': (
        dict(
            attention_type='factorized_dot_product_attention',
            classifier='token',
        ),
        ["classifier='token' is not supported", 'gap'],
    ),
    'heads vs hidden': (
        dict(num_heads=3),
        ['num_heads=3', 'hidden_size=32', '[1, 2, 4, 8, 16, 32]'],
    ),
    'model 2 heads vs hidden': (
        dict(
            attention_type='factorized_encoder',
            spatial_transformer=dict(num_heads=5, mlp_dim=8, num_layers=1),
        ),
        ['spatial_transformer.num_heads=5', 'hidden_size=32'],
    ),
    'model 4 odd heads': (
        dict(
            attention_type='factorized_dot_product_attention',
            hidden_size=30,
            num_heads=3,
        ),
        ['must be even', '3'],
    ),
    'unknown posemb': (
        dict(positional_embedding='rope'),
        ['positional_embedding', "'rope'"],
    ),
    'unknown order': (
        dict(
            attention_type='factorized_self_attention_block',
            attention_config=dict(
                type='factorized_self_attention_block',
                attention_order='diagonal',
            ),
        ),
        ['attention_order', "'diagonal'"],
    ),
    'unknown kernel init': (
        dict(
            temporal_encoding_config=dict(
                method='3d_conv', kernel_init_method='magic'
            )
        ),
        ['kernel_init_method', "'magic'"],
    ),
    'cudnn in float32': (
        dict(attention_implementation='cudnn'),
        ["attention_implementation='cudnn'", 'bfloat16'],
    ),
    'unknown tokenizer': (
        dict(temporal_encoding_config=dict(method='2d')),
        ['temporal_encoding_config.method', "'2d'"],
    ),
}


def error_config(attention_type='spacetime', classifier='gap', **overrides):
  config = make_config(attention_type, classifier)
  config.model.update(overrides)
  return config


@pytest.mark.parametrize('case', list(ERROR_CASES))
def test_config_errors_at_construction(case):
  overrides, fragments = ERROR_CASES[case]
  with pytest.raises(ValueError) as err:
    build(error_config(**overrides))
  for fragment in fragments:
    assert fragment in str(err.value)


def test_non_tiling_patch_fails_at_construction_and_first_call():
  config = make_config()
  config.model.patches.size = (5, 4, 4)
  with pytest.raises(ValueError) as err:
    build(config)
  message = str(err.value)
  for fragment in [
      'height',
      'Patch height 5',
      'input height 16',
      '[1, 2, 4, 8, 16]',
      'drop_remainder',
  ]:
    assert fragment in message
  # Without input_shape in the meta data it fails on the first call instead.
  model = vivit.get_model_cls('vivit_classification')(
      config, {'num_classes': NUM_CLASSES}
  )
  with pytest.raises(ValueError, match='does not tile the input height 16'):
    model.flax_model.init(jax.random.key(0), clips(), train=False)


def test_drop_remainder_allows_non_tiling_but_not_zero_tokens():
  config = make_config()
  config.model.patches = ml_collections.ConfigDict(
      dict(size=(5, 4, 3), drop_remainder=True)
  )
  model = build(config)
  assert model.flax_model.token_grid((16, 16, 16)) == (5, 3, 4)
  config.model.patches.size = (4, 4, 17)
  with pytest.raises(ValueError, match='zero tokens along the time'):
    build(config)


def test_bad_dtype_and_model_name():
  config = make_config()
  config.model_dtype_str = 'float8'
  with pytest.raises(ValueError, match='model_dtype_str'):
    build(config)
  with pytest.raises(ValueError, match='vivit_classification'):
    vivit.get_model_cls('vit')


# ----------------------------------------------------- loss and metrics
def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def loss_batch(num_classes=NUM_CLASSES, n=8, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, num_classes)).astype(np.float32)
  labels = rng.integers(0, num_classes, n)
  mask = np.ones(n, np.float32)
  mask[-3:] = 0.0
  logits[-3:] = np.nan  # padding must not leak in, even as nan
  batch = {
      'label': np.eye(num_classes, dtype=np.float32)[labels],
      'batch_mask': mask,
  }
  return logits, labels, batch


@pytest.mark.parametrize('smoothing', [None, 0.1])
def test_loss_is_weighted_mean_cross_entropy(smoothing):
  config = make_config()
  config.label_smoothing = smoothing
  model = build(config)
  logits, labels, batch = loss_batch()
  targets = batch['label'][:5]
  if smoothing:
    targets = targets * (1 - smoothing) + smoothing / NUM_CLASSES
  want = -(targets * np_log_softmax(logits[:5])).sum(-1).mean()
  got = model.loss_function(jnp.asarray(logits), batch)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Integer labels give the same loss.
  int_batch = dict(batch, label=labels)
  np.testing.assert_allclose(
      model.loss_function(jnp.asarray(logits), int_batch), want, rtol=1e-5
  )


def test_loss_adds_l2_decay():
  config = make_config()
  config.l2_decay_factor = 0.01
  model = build(config)
  logits, _, batch = loss_batch()
  params = {'a': jnp.full((3,), 2.0), 'b': {'c': jnp.ones((2, 2))}}
  base = -(batch['label'][:5] * np_log_softmax(logits[:5])).sum(-1).mean()
  got = model.loss_function(jnp.asarray(logits), batch, params)
  np.testing.assert_allclose(got, base + 0.5 * 0.01 * (12 + 4), rtol=1e-5)
  with pytest.raises(ValueError, match='model_params'):
    model.loss_function(jnp.asarray(logits), batch)


def test_metrics_are_weighted_and_summed_over_devices():
  model = build(make_config())
  logits, labels, batch = loss_batch(n=8)
  metrics_fn = model.get_metrics_fn('validation')
  # Two "devices" of 4 examples each, summed over the axis named 'batch'.
  shard = lambda a: jnp.asarray(a).reshape((2, 4) + np.shape(a)[1:])
  got = jax.vmap(metrics_fn, axis_name='batch')(
      shard(logits), jax.tree_util.tree_map(shard, batch)
  )
  valid = logits[:5]
  order = np.argsort(-valid, axis=-1)
  want = {
      'accuracy': (order[:, 0] == labels[:5]).sum(),
      'top_5_accuracy': (order[:, :5] == labels[:5, None]).any(-1).sum(),
      'loss': -np_log_softmax(valid)[np.arange(5), labels[:5]].sum(),
  }
  assert set(got) == set(want)
  for name, value in want.items():
    total, count = got[name]
    np.testing.assert_allclose(total, np.full(2, value), rtol=1e-5)
    np.testing.assert_allclose(count, np.full(2, 5.0))


def test_metrics_without_top5_for_few_classes():
  model = build(make_config(), num_classes=5)
  logits, _, batch = loss_batch(num_classes=5)
  got = jax.pmap(model.get_metrics_fn('train'), axis_name='batch')(
      jnp.asarray(logits)[None],
      jax.tree_util.tree_map(lambda a: a[None], batch),
  )
  assert set(got) == {'accuracy', 'loss'}
