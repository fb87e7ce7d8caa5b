"""Tests for vivit_flax.model_utils: token grids, frame sampling, tubelet
initialisers, the 3D sin-cos embedding and attention along one axis."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vivit_flax import model_utils


def test_token_grid_tubelets_and_sampling():
  assert model_utils.token_grid((32, 224, 224), (16, 16, 2)) == (16, 14, 14)
  assert model_utils.token_grid(
      (28, 28, 28), (8, 8, 8), drop_remainder=True
  ) == (3, 3, 3)
  assert model_utils.token_grid(
      (16, 32, 32), (8, 8), tokenizer='temporal_sampling', n_sampled_frames=5
  ) == (5, 4, 4)
  assert model_utils.token_grid(
      (16, 32, 32),
      (8, 8, 1),
      tokenizer='temporal_sampling',
      n_sampled_frames=16,
  ) == (16, 4, 4)


@pytest.mark.parametrize(
    'kwargs,fragments',
    [
        (
            dict(input_thw=(12, 16, 16), patch_size=(4, 4, 5)),
            ['time', 'Patch time 5', 'input time 12', '[1, 2, 3, 4, 6, 12]'],
        ),
        (
            dict(input_thw=(12, 16, 18), patch_size=(4, 4, 4)),
            ['Patch width 4', 'input width 18', '[1, 2, 3, 6, 9, 18]'],
        ),
        (
            dict(
                input_thw=(12, 16, 16),
                patch_size=(4, 32, 4),
                drop_remainder=True,
            ),
            ['zero tokens', 'width', 'between 1 and 16'],
        ),
        (
            dict(input_thw=(12, 16, 16), patch_size=(4, 4)),
            ["'3d_conv' needs", '(h, w, t)'],
        ),
        (
            dict(
                input_thw=(12, 16, 16),
                patch_size=(4, 4, 2),
                tokenizer='temporal_sampling',
                n_sampled_frames=4,
            ),
            ['(h, w) or (h, w, 1)'],
        ),
        (
            dict(
                input_thw=(12, 16, 16),
                patch_size=(4, 4),
                tokenizer='temporal_sampling',
            ),
            ['n_sampled_frames'],
        ),
        (
            dict(
                input_thw=(12, 16, 16),
                patch_size=(4, 4),
                tokenizer='temporal_sampling',
                n_sampled_frames=13,
            ),
            ['n_sampled_frames=13', '[1, 12]'],
        ),
    ],
)
def test_token_grid_errors(kwargs, fragments):
  input_thw = kwargs.pop('input_thw')
  patch_size = kwargs.pop('patch_size')
  with pytest.raises(ValueError) as err:
    model_utils.token_grid(input_thw, patch_size, **kwargs)
  for fragment in fragments:
    assert fragment in str(err.value)


def test_sample_frame_indices():
  np.testing.assert_array_equal(
      model_utils.sample_frame_indices(16, 4), [3, 6, 10, 13]
  )
  np.testing.assert_array_equal(
      model_utils.sample_frame_indices(8, 8), np.arange(8)
  )
  idx = model_utils.sample_frame_indices(28, 9)
  assert len(idx) == 9 and np.all(np.diff(idx) > 0) and idx[-1] < 28


def test_central_frame_initializer():
  kernel = model_utils.central_frame_initializer()(
      jax.random.key(0), (3, 4, 4, 2, 8)
  )
  assert np.all(np.asarray(kernel[1]) != 0)
  np.testing.assert_array_equal(kernel[0], 0.0)
  np.testing.assert_array_equal(kernel[2], 0.0)
  even = model_utils.central_frame_initializer()(
      jax.random.key(0), (2, 4, 4, 2, 8)
  )
  np.testing.assert_array_equal(even[0], 0.0)  # centre of 2 frames is index 1
  assert np.all(np.asarray(even[1]) != 0)


def test_average_frame_initializer():
  kernel = model_utils.average_frame_initializer()(
      jax.random.key(0), (4, 3, 3, 1, 16)
  )
  for t in range(1, 4):
    np.testing.assert_array_equal(kernel[t], kernel[0])
  assert np.std(np.asarray(kernel)) > 0


def test_sinusoidal_3d_position_embedding():
  emb = model_utils.sinusoidal_3d_position_embedding((2, 3, 4), 32)
  assert emb.shape == (24, 32) and emb.dtype == np.float32
  assert len({row.tobytes() for row in emb}) == 24  # every position distinct
  np.testing.assert_array_equal(emb[:, 30:], 0.0)  # 32 = 6 * 5 + 2 padding
  grid = emb.reshape(2, 3, 4, 32)
  # Channels 0-9 encode time only, 10-19 height only, 20-29 width only.
  np.testing.assert_allclose(grid[:, 0, 0, :10], grid[:, 2, 3, :10])
  np.testing.assert_allclose(grid[0, :, 0, 10:20], grid[1, :, 3, 10:20])
  np.testing.assert_allclose(grid[0, 0, :, 20:30], grid[1, 2, :, 20:30])
  with pytest.raises(ValueError, match='channels=4 must be at least 6'):
    model_utils.sinusoidal_3d_position_embedding((2, 2, 2), 4)


def _qkv(shape, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(k, shape) for k in keys]


def test_attention_along_any_axis_matches_flat_attention():
  q, k, v = _qkv((2, 3, 5, 4, 8))  # B, T, S, heads, depth
  # Axis 2 takes the jax.nn.dot_product_attention path; axis 1 the einsum one.
  space = model_utils.dot_product_attention(q, k, v, axis=2)
  time = model_utils.dot_product_attention(q, k, v, axis=1)
  flat = lambda a: a.reshape(6, 5, 4, 8)
  np.testing.assert_allclose(
      space,
      jax.nn.dot_product_attention(flat(q), flat(k), flat(v)).reshape(
          space.shape
      ),
      atol=1e-6,
  )
  swap = lambda a: jnp.swapaxes(a, 1, 2)
  np.testing.assert_allclose(
      time,
      swap(
          model_utils.dot_product_attention(swap(q), swap(k), swap(v), axis=2)
      ),
      atol=1e-6,
  )


@pytest.mark.parametrize('fast_dropout', [False, True])
def test_attention_dropout(fast_dropout):
  q, k, v = _qkv((2, 10, 4, 8))
  clean = model_utils.dot_product_attention(q, k, v)
  run = lambda seed, deterministic=False: model_utils.dot_product_attention(
      q,
      k,
      v,
      dropout_rng=jax.random.key(seed),
      dropout_rate=0.5,
      deterministic=deterministic,
      fast_dropout=fast_dropout,
  )
  np.testing.assert_array_equal(run(0), run(0))
  assert not np.allclose(run(0), clean)
  assert not np.allclose(run(0), run(1))
  np.testing.assert_allclose(run(0, deterministic=True), clean, atol=1e-6)


@pytest.mark.parametrize('fast', [False, True])
@pytest.mark.parametrize('rate', [0.1, 0.5])
def test_dropout_keep_mask_keeps_one_minus_rate(rate, fast):
  """Over 2^20 elements the kept fraction is 1 - rate within 5 standard
  errors, the scale is 1 / (1 - rate) (the fast mask: within 2^-16), and the
  mask is a function of the key."""
  keep, scale = model_utils.dropout_keep_mask(
      jax.random.key(0), rate, (1024, 1024), fast=fast
  )
  keep = np.asarray(keep)
  assert keep.shape == (1024, 1024) and keep.dtype == bool
  tolerance = 5 * np.sqrt(rate * (1 - rate) / keep.size)
  assert abs(keep.mean() - (1 - rate)) < tolerance
  np.testing.assert_allclose(scale, 1 / (1 - rate), rtol=2**-16)
  if fast:  # Exactly the inverse of the 16-bit mask's keep probability.
    assert scale == 2**16 / (2**16 - round(rate * 2**16))
  again, _ = model_utils.dropout_keep_mask(
      jax.random.key(0), rate, (1024, 1024), fast=fast
  )
  other, _ = model_utils.dropout_keep_mask(
      jax.random.key(1), rate, (1024, 1024), fast=fast
  )
  np.testing.assert_array_equal(keep, again)
  assert np.any(keep != np.asarray(other))


def test_factorized_attention_splits_heads():
  q, k, v = _qkv((2, 3, 5, 4, 8))
  out = model_utils.factorized_dot_product_attention(q, k, v)
  time = model_utils.dot_product_attention(
      q[..., :2, :], k[..., :2, :], v[..., :2, :], axis=1
  )
  space = model_utils.dot_product_attention(
      q[..., 2:, :], k[..., 2:, :], v[..., 2:, :], axis=2
  )
  np.testing.assert_allclose(out, jnp.concatenate([time, space], -2), atol=1e-6)


def test_classification_helpers():
  logits = jnp.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
  labels = jnp.array([2, 1])
  one_hot = model_utils.as_one_hot(labels, logits)
  np.testing.assert_array_equal(
      model_utils.as_one_hot(one_hot, logits), one_hot
  )
  np.testing.assert_array_equal(
      model_utils.topk_correct(logits, one_hot, 1), [0.0, 1.0]
  )
  np.testing.assert_array_equal(
      model_utils.topk_correct(logits, one_hot, 2), [1.0, 1.0]
  )
  ce = model_utils.softmax_cross_entropy(logits, one_hot)
  np.testing.assert_allclose(
      ce, -np.log(np.exp([2.0, 5.0]) / np.exp(logits).sum(-1)), rtol=1e-5
  )
  params = {'w': jnp.ones((2, 3)), 'b': [jnp.array([2.0])]}
  np.testing.assert_allclose(model_utils.l2_norm_squared(params), 10.0)


def _lax_conv3d(x, kernel, stride, padding):
  return jax.lax.conv_general_dilated(
      x,
      kernel,
      (stride,) * 3,
      padding,
      dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'),
  )


@pytest.mark.parametrize(
    'channels, size, kernel_size, stride, padding',
    [
        (1, 9, 3, 1, 'SAME'),  # single channel: the weighted view sum
        (1, 10, 3, 2, 'SAME'),
        (1, 9, 5, 2, 'VALID'),
        (3, 9, 3, 1, 'SAME'),  # several: the concatenated product
        (3, 10, 3, 2, 'VALID'),
    ],
)
def test_conv3d_and_its_gradients_match_lax_convolution(
    channels, size, kernel_size, stride, padding
):
  x = jax.random.normal(
      jax.random.PRNGKey(0), (2, size, size - 1, size, channels)
  )
  kernel = jax.random.normal(
      jax.random.PRNGKey(1), (kernel_size,) * 3 + (channels, 4)
  )
  probe = jax.random.normal(
      jax.random.PRNGKey(2), _lax_conv3d(x, kernel, stride, padding).shape
  )

  def loss(conv, x, kernel):
    return jnp.sum(jnp.tanh(conv(x, kernel, stride, padding)) * probe)

  np.testing.assert_allclose(
      model_utils.conv3d(x, kernel, stride, padding),
      _lax_conv3d(x, kernel, stride, padding),
      atol=1e-4,
      rtol=1e-4,
  )
  got = jax.jit(jax.grad(functools.partial(loss, model_utils.conv3d), (0, 1)))(
      x, kernel
  )
  want = jax.grad(functools.partial(loss, _lax_conv3d), (0, 1))(x, kernel)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)
