"""Tests for vivit_flax.attention_maps: Model 1's rollout against plain jax.numpy math, the
factorised models' against dense token-mixing matrices, maps that sum to one, the voxels each
token lights up, batch independence, and a trained model's map on the synthetic set's objects.

Tiny models run eagerly (op by op), which on CPU is cheaper than compiling each variant.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.synthetic import vivit_smoke
from vivit_flax import attention_maps, inference, model, model_utils, train_utils
from vivit_flax import trainer

TINY = model.TransformerSize(num_heads=2, mlp_dim=16, num_layers=2)
CLIP = (4, 8, 8)  # T, H, W: 2 x 2 x 2 tubelets of (h, w, t) = (4, 4, 2)


def _vivit(**overrides) -> model.ViViT:
  """A ViViT of width 8 with two layers of two heads (each transformer of Model 2 too)."""
  options = dict(
      num_classes=3,
      hidden_size=8,
      patch_size=(4, 4, 2),
      transformer=TINY,
      spatial_transformer=TINY,
      temporal_transformer=TINY,
      dropout_rate=0.0,
      attention_dropout_rate=0.0,
  )
  return model.ViViT(**(options | overrides))


def _clips(n=8, thw=CLIP, seed=0):
  return jnp.asarray(
      np.random.default_rng(seed).random((n,) + tuple(thw) + (1,)),
      jnp.float32,
  )


def _params(flax_model, x):
  """Initial parameters, with a random output layer (its zero init predicts uniformly)."""
  params = flax_model.init(jax.random.PRNGKey(0), x[:1], train=False)['params']
  kernel = params['output_projection']['kernel']
  params['output_projection']['kernel'] = jax.random.normal(
      jax.random.PRNGKey(1), kernel.shape
  )
  return params


def _token_map(flax_model, params, x):
  _, intermediates = attention_maps.apply_with_attention(flax_model, params, x)
  grid = flax_model.token_grid(x.shape[1:4])
  return attention_maps.token_map(flax_model, intermediates, grid)


# Model 1 in plain jax.numpy, from the parameters.


def _layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + 1e-6) * p['scale'] + p['bias']


def _project(p, x):
  return jnp.einsum('bnd,dhk->bnhk', x, p['kernel']) + p['bias']


def _attention(p, queries, tokens):
  """Multi-head attention: output and softmax weights [B, heads, q, k]."""
  q, k, v = (
      _project(p[name], x)
      for name, x in (('query', queries), ('key', tokens), ('value', tokens))
  )
  weights = jax.nn.softmax(
      jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1]), axis=-1
  )
  out = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
  return (
      jnp.einsum('bqhd,hdo->bqo', out, p['out']['kernel']) + p['out']['bias'],
      weights,
  )


def _plain_model1_map(params, x, classifier):
  """Model 1's rollout map [B, N]: the forward pass and Abnar and Zuidema's product."""
  b = x.shape[0]
  patches = x.reshape(b, 2, 2, 2, 4, 2, 4, 1)  # [B, t, pt, h, ph, w, pw, C]
  tokens = (
      jnp.einsum(
          'bTtHhWwc,thwcd->bTHWd', patches, params['embedding']['kernel']
      ).reshape(b, 8, -1)
      + params['embedding']['bias']
  )
  if classifier == 'token':
    cls = jnp.broadcast_to(params['cls'], (b, 1, tokens.shape[-1]))
    tokens = jnp.concatenate([cls, tokens], axis=1)
  encoder = params['Transformer']
  h = tokens + encoder['posembed_input']['pos_embedding']
  layers = []
  for i in range(TINY.num_layers):
    block = encoder[f'encoderblock_{i}']
    y = _layer_norm(h, block['LayerNorm_0'])
    y, weights = _attention(block['MultiHeadDotProductAttention_0'], y, y)
    h = h + y
    mlp = block['MlpBlock_0']
    y = _layer_norm(h, block['LayerNorm_1'])
    y = jax.nn.gelu(y @ mlp['Dense_0']['kernel'] + mlp['Dense_0']['bias'])
    h = h + y @ mlp['Dense_1']['kernel'] + mlp['Dense_1']['bias']
    layers.append(weights.mean(axis=1))
  h = _layer_norm(h, encoder['encoder_norm'])
  n = h.shape[1]
  rollout = jnp.eye(n)
  for weights in layers:
    rollout = (0.5 * weights + 0.5 * jnp.eye(n)) @ rollout
  if classifier == 'map':
    head = params['MAPHead']
    probe = jnp.broadcast_to(head['probe'], (b, 1, h.shape[-1]))
    _, weights = _attention(head['MultiHeadDotProductAttention_0'], probe, h)
    return jnp.einsum('bn,bnk->bk', weights.mean(axis=1)[:, 0], rollout)
  row = rollout[:, 0, 1:]
  return row / row.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize('classifier', ['map', 'token'])
def test_model1_rollout_matches_plain_jax_numpy(classifier):
  flax_model = _vivit(classifier=classifier)
  x = _clips(3)
  params = _params(flax_model, x)
  np.testing.assert_allclose(
      _token_map(flax_model, params, x).reshape(3, -1),
      _plain_model1_map(params, x, classifier),
      rtol=1e-5,
      atol=1e-6,
  )


# Models 3 and 4: dense [N, N] token mixing of each sub-layer, built from the sown weights.


def _dense(weights, axis, s):
  """Head-averaged weights of attention along `axis` ('time': [B, S, H, T, T]; 'space':
  [B, T, H, S, S]) as [B, N, N] mixing of the time-major tokens."""
  w = np.asarray(weights).mean(axis=2)
  b = w.shape[0]
  if axis == 'time':
    return np.einsum('bsqk,sr->bqskr', w, np.eye(s)).reshape(
        b, -1, w.shape[1] * w.shape[-1]
    )
  return np.einsum('btqk,tu->btquk', w, np.eye(w.shape[1])).reshape(
      b, w.shape[1] * s, -1
  )


@pytest.mark.parametrize(
    'attention_type, order, classifier',
    [
        ('factorized_self_attention_block', 'time_space', 'gap'),
        ('factorized_self_attention_block', 'space_time', 'map'),
        ('factorized_dot_product_attention', 'time_space', 'map'),
    ],
)
def test_factorised_rollout_matches_dense_token_mixing(
    attention_type, order, classifier
):
  flax_model = _vivit(
      attention_type=attention_type,
      attention_order=order,
      classifier=classifier,
  )
  x = _clips(2)  # T = 2 time indices of S = 4 tokens
  params = _params(flax_model, x)
  _, inter = attention_maps.apply_with_attention(flax_model, params, x)
  n, eye = 8, np.eye(8)
  rollout = np.broadcast_to(eye, (2, n, n))
  for i in range(2):
    block = inter['Transformer'][f'encoderblock_{i}']
    if attention_type == 'factorized_dot_product_attention':
      time, space = block['MultiHeadDotProductAttention_0']['attention_weights']
      mixing = 0.5 * _dense(time, 'time', 4) + 0.5 * _dense(space, 'space', 4)
      layer = 0.5 * mixing + 0.5 * eye
    else:
      layer = eye
      for axis in model.ATTENTION_ORDERS[order]:
        (w,) = block[f'MultiHeadDotProductAttention_{axis}'][
            'attention_weights'
        ]
        layer = (0.5 * _dense(w, axis, 4) + 0.5 * eye) @ layer
    rollout = layer @ rollout
  if classifier == 'map':
    (w,) = inter['MAPHead']['MultiHeadDotProductAttention_0'][
        'attention_weights'
    ]
    pool = np.asarray(w).mean(axis=1)[:, 0]
  else:
    pool = np.full((2, n), 1 / n)
  np.testing.assert_allclose(
      _token_map(flax_model, params, x).reshape(2, -1),
      np.einsum('bn,bnk->bk', pool, rollout),
      rtol=1e-5,
      atol=1e-7,
  )


@pytest.mark.parametrize(
    'overrides',
    [
        dict(attention_type='factorized_encoder', classifier='token'),
        dict(
            attention_type='factorized_self_attention_block', classifier='gsp'
        ),
        dict(
            attention_type='factorized_dot_product_attention', classifier='gap'
        ),
        dict(
            classifier='gmp',
            stem_features=(4,),
            stem_strides=(2,),
            patch_size=(2, 2, 1),
        ),
        dict(
            classifier='map',
            tokenizer='temporal_sampling',
            n_sampled_frames=3,
            patch_size=(4, 4),
        ),
    ],
)
def test_maps_sum_to_one(overrides):
  flax_model = _vivit(**overrides)
  x = _clips(2)
  params = _params(flax_model, x)
  tokens = _token_map(flax_model, params, x)
  assert (tokens >= 0).all()
  np.testing.assert_allclose(tokens.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)
  _, voxels = attention_maps.explain(flax_model, params, x)
  assert voxels.shape == (2,) + CLIP
  np.testing.assert_allclose(voxels.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    'overrides, thw, hot, lit',
    [
        # Tubelets (h, w, t) = (3, 2, 4), trailing voxels dropped: 2 x 2 x 4 tokens.
        (
            dict(patch_size=(3, 2, 4), drop_remainder=True),
            (10, 7, 9),
            (1, 0, 3),
            ((4, 8), (0, 3), (6, 8)),
        ),
        # A stem of stride 2 (SAME), then 2^3 tubelets of its 4^3 output.
        (
            dict(patch_size=(2, 2, 2), stem_features=(4,), stem_strides=(2,)),
            (8, 8, 8),
            (1, 0, 1),
            ((4, 8), (0, 4), (4, 8)),
        ),
        # A 5^3 VALID stem: output voxel j is centred on input voxel j + 2.
        (
            dict(
                patch_size=(4, 4, 4),
                stem_features=(4,),
                stem_strides=(1,),
                stem_kernel_size=5,
                stem_padding='VALID',
            ),
            (12, 12, 12),
            (0, 1, 0),
            ((2, 6), (6, 10), (2, 6)),
        ),
        # Uniform sampling of 3 of 10 frames (2, 5, 8), 4 x 4 patches.
        (
            dict(
                tokenizer='temporal_sampling',
                n_sampled_frames=3,
                patch_size=(4, 4),
            ),
            (10, 8, 8),
            (1, 1, 0),
            ((5, 6), (4, 8), (0, 4)),
        ),
    ],
)
def test_a_hot_token_lights_the_voxels_it_embeds(overrides, thw, hot, lit):
  flax_model = _vivit(**overrides)
  grid = flax_model.token_grid(thw)
  tokens = np.zeros((1,) + grid, np.float32)
  tokens[(0,) + hot] = 1.0
  owners = attention_maps.voxel_owners(flax_model, thw)
  voxels = np.asarray(attention_maps.upsample(tokens, owners))[0]
  expected = np.zeros(thw, bool)
  expected[tuple(slice(*r) for r in lit)] = True
  np.testing.assert_array_equal(voxels > 0, expected)
  np.testing.assert_allclose(voxels[expected], 1.0 / expected.sum())
  np.testing.assert_allclose(
      attention_maps.per_token(voxels[None], owners, grid), tokens, atol=1e-6
  )


def test_a_volume_alone_and_in_a_batch_of_eight_get_the_same_map():
  flax_model = _vivit(classifier='map')
  x = _clips(8)
  params = _params(flax_model, x)
  explain = jax.jit(lambda x: attention_maps.explain(flax_model, params, x))
  alone, in_batch = explain(x[3:4]), explain(x)
  for one, eight in zip(alone, in_batch):
    np.testing.assert_allclose(one[0], eight[3], rtol=1e-5, atol=1e-8)


def test_test_time_views_average_probabilities_and_pulled_back_maps():
  flax_model = _vivit(classifier='map')
  x = _clips(2)
  params = _params(flax_model, x)
  probabilities, voxels = attention_maps.explain(
      flax_model, params, x, flip_axes=(2,)
  )
  _, expected = train_utils.predict(flax_model.apply, params, x, (2,))
  np.testing.assert_allclose(probabilities, expected, rtol=1e-5)
  _, plain = attention_maps.explain(flax_model, params, x)
  _, flipped = attention_maps.explain(flax_model, params, x[:, :, :, ::-1])
  np.testing.assert_allclose(
      voxels, 0.5 * (plain + flipped[:, :, :, ::-1]), rtol=1e-5, atol=1e-8
  )


# A model trained on the synthetic set looks at the shape.


@pytest.fixture(scope='module')
def synthetic_workdir(smoke_data_dir, tmp_path_factory):
  """The smoke model with a MAP head, trained 8 epochs (128 steps) on the synthetic set."""
  config = vivit_smoke.get_config()
  config.dataset_configs.data_dir = smoke_data_dir
  config.model.classifier = 'map'
  config.num_training_epochs = 8
  config.lr_configs.warmup_steps = 10
  config.log_summary_steps = 1000
  config.checkpoint_steps = 1000
  config.write_summary = False
  workdir = str(tmp_path_factory.mktemp('synthetic'))
  trainer.train_and_evaluate(config, workdir)
  return config, workdir


def _objects(volumes):
  """The shapes of synthetic volumes [N, T, H, W]: voxels whose 3^3 mean lies above the
  midpoint between the volume's median (the background) and its maximum."""
  smooth = np.asarray(
      model_utils.conv3d(
          jnp.asarray(volumes.reshape(volumes.shape[:4] + (1,)), jnp.float32),
          jnp.full((3, 3, 3, 1, 1), 1 / 27),
      )
  )[..., 0]
  median = np.median(smooth, axis=(1, 2, 3), keepdims=True)
  return smooth > (median + smooth.max(axis=(1, 2, 3), keepdims=True)) / 2


def test_a_trained_model_puts_more_attention_on_the_shape_than_on_the_background(
    synthetic_workdir,
):
  config, workdir = synthetic_workdir
  images, _ = trainer.Trainer(config, workdir).dataset.arrays('test')
  _, maps = inference.load_explainer(workdir)(images)
  objects = _objects(images)
  share = objects.mean(axis=(1, 2, 3))
  mass = (maps * objects).sum(axis=(1, 2, 3))
  # Attention mass per voxel is higher on the shape than on the background...
  assert np.mean(mass / share > (1 - mass) / (1 - share)) >= 0.9
  # ... by half again at least, on the mean.
  assert mass.mean() > 1.5 * share.mean()
