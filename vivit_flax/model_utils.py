"""Helpers for the ViViT model: token-grid arithmetic, frame sampling, tubelet
kernel initialisers, the fixed 3D sin-cos position embedding, attention along
one axis of a token grid, and the weighted classification losses/metrics."""

import functools
from typing import Any, Callable, Optional, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vivit_flax.config_checks import check_choice

_DIM_NAMES = ('time', 'height', 'width')
# Tokenisers (config.model.temporal_encoding_config.method): tubelets of a 3D
# convolution, or 2D patches of uniformly sampled frames.
TEMPORAL_ENCODINGS = ('3d_conv', 'temporal_sampling')


def divisors(n: int) -> list[int]:
  """The positive divisors of n, ascending."""
  return [d for d in range(1, n + 1) if n % d == 0]


def sample_frame_indices(num_frames: int, n_sampled_frames: int) -> np.ndarray:
  """Indices of `n_sampled_frames` frames spread uniformly over a clip.

  Frame i (1-based) of the sample sits at round(i * num_frames / (n + 1)), the
  same positions as Scenic's uniform sampler; asking for every frame returns
  all of them.
  """
  if n_sampled_frames < 1 or n_sampled_frames > num_frames:
    raise ValueError(
        f'temporal_encoding_config.n_sampled_frames={n_sampled_frames} is out '
        f'of range for inputs with {num_frames} frames: use a value in '
        f'[1, {num_frames}].'
    )
  if n_sampled_frames == num_frames:
    return np.arange(num_frames)
  step = num_frames / (n_sampled_frames + 1)
  idx = np.round(step * np.arange(1, n_sampled_frames + 1)).astype(np.int32)
  return np.minimum(idx, num_frames - 1)


def token_grid(
    input_thw: Sequence[int],
    patch_size: Sequence[int],
    *,
    drop_remainder: bool = False,
    tokenizer: str = '3d_conv',
    n_sampled_frames: Optional[int] = None,
) -> tuple[int, int, int]:
  """Number of tokens along (time, height, width) for an input of that shape.

  Args:
    input_thw: (T, H, W) of the input clip.
    patch_size: Scenic order (h, w, t); for 'temporal_sampling' (h, w) or
      (h, w, 1).
    drop_remainder: if True, trailing voxels that do not fill a patch are
      dropped (like a VALID convolution); otherwise they raise.
    tokenizer: '3d_conv' (tubelets) or 'temporal_sampling' (2D patches of
      uniformly sampled frames).
    n_sampled_frames: frames kept by 'temporal_sampling'.

  Raises:
    ValueError: when a patch does not tile the input (and drop_remainder is
      False) or leaves zero tokens along some dimension.
  """
  check_choice(
      'config.model.temporal_encoding_config.method',
      tokenizer,
      TEMPORAL_ENCODINGS,
  )
  t_in, h_in, w_in = (int(s) for s in input_thw)
  if tokenizer == 'temporal_sampling':
    if len(patch_size) == 3 and patch_size[2] != 1:
      raise ValueError(
          "temporal_encoding_config.method='temporal_sampling' embeds each "
          'sampled frame with 2D patches, so config.model.patches.size must be '
          f'(h, w) or (h, w, 1); got {tuple(patch_size)}.'
      )
    if n_sampled_frames is None:
      raise ValueError(
          "temporal_encoding_config.method='temporal_sampling' needs "
          'temporal_encoding_config.n_sampled_frames.'
      )
    t_tokens = len(sample_frame_indices(t_in, n_sampled_frames))
    checks = ((1, h_in, patch_size[0]), (2, w_in, patch_size[1]))
  else:
    if len(patch_size) != 3:
      raise ValueError(
          "temporal_encoding_config.method='3d_conv' needs "
          'config.model.patches.size = (h, w, t); got '
          f'{tuple(patch_size)}.'
      )
    ph, pw, pt = patch_size
    t_tokens = None
    checks = ((0, t_in, pt), (1, h_in, ph), (2, w_in, pw))

  counts = {0: t_tokens}
  for dim, size, patch in checks:
    name = _DIM_NAMES[dim]
    if patch < 1 or patch > size:
      raise ValueError(
          f'Patch {name} {patch} leaves zero tokens along the {name} '
          f'dimension of size {size}: config.model.patches.size needs a '
          f'{name} between 1 and {size} (patches.size is (h, w, t)).'
      )
    if size % patch and not drop_remainder:
      raise ValueError(
          f'Patch {name} {patch} does not tile the input {name} {size} '
          f'({size} % {patch} = {size % patch}). Patch {name}s that tile it: '
          f'{divisors(size)}. Change config.model.patches.size (order '
          '(h, w, t)) or set config.model.patches.drop_remainder=True to '
          'drop the trailing voxels.'
      )
    counts[dim] = size // patch
  return counts[0], counts[1], counts[2]


STEM_PADDINGS = ('SAME', 'VALID')


def stem_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
  """Voxels along one axis after a cubic convolution of `size` voxels, as
  lax.conv_general_dilated counts them."""
  if padding == 'SAME':
    return -(-size // stride)
  return max((size - kernel) // stride + 1, 0)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """Zero voxels (before, after) that 'SAME' padding adds along one axis of
  `size` voxels, as lax.conv_general_dilated pads them."""
  total = max(
      (stem_output_size(size, kernel, stride, 'SAME') - 1) * stride
      + kernel
      - size,
      0,
  )
  return total // 2, total - total // 2


def _pad_for(x: jax.Array, k: int, stride: int, padding: str) -> jax.Array:
  """[B, T, H, W, C] with the zeros a cubic convolution's 'SAME' padding adds
  (unchanged for 'VALID')."""
  if padding != 'SAME':
    return x
  pads = [same_padding(n, k, stride) for n in x.shape[1:4]]
  return jnp.pad(x, [(0, 0)] + pads + [(0, 0)])


def _shifted_views(
    x: jax.Array, k: int, stride: int, padding: str
) -> list[jax.Array]:
  """The k^3 shifted, strided views of [B, T, H, W, C] (zero-padded for SAME),
  each [B, T', H', W', C]: view (i, j, l) holds, at every output voxel, the
  input voxel under kernel tap (i, j, l)."""
  out = [stem_output_size(n, k, stride, padding) for n in x.shape[1:4]]
  x = _pad_for(x, k, stride, padding)
  return [
      x[
          :,
          i : i + (out[0] - 1) * stride + 1 : stride,
          j : j + (out[1] - 1) * stride + 1 : stride,
          l : l + (out[2] - 1) * stride + 1 : stride,
      ]
      for i in range(k)
      for j in range(k)
      for l in range(k)
  ]


def _weighted_view_sum(
    x: jax.Array, kernel: jax.Array, stride: int, padding: str
) -> jax.Array:
  """Convolution of single-channel [B, T, H, W, 1] as the sum of its shifted
  views, each times its tap's F weights: one elementwise loop in XLA."""
  k = kernel.shape[0]
  taps = kernel.reshape(k**3, kernel.shape[-1])
  terms = [
      view * tap
      for view, tap in zip(_shifted_views(x, k, stride, padding), taps)
  ]
  return functools.reduce(jnp.add, terms)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _single_channel_conv3d(
    x: jax.Array, kernel: jax.Array, stride: int, padding: str
) -> jax.Array:
  return _weighted_view_sum(x, kernel, stride, padding)


def _single_channel_conv3d_forward(x, kernel, stride, padding):
  return _weighted_view_sum(x, kernel, stride, padding), (x, kernel)


def _single_channel_conv3d_backward(stride, padding, residuals, grad):
  """The kernel's gradient as one convolution: the (padded) input volumes,
  their batch as the channels, correlated with the output gradient as a
  [T', H', W', B, F] kernel dilated by the stride; XLA:CPU runs this large
  contraction as blocked products, where stacking the k^3 shifted views of the
  batch into one array took about 40 ms a step (RESULTS.md). The input's
  gradient is that of the weighted sum (XLA drops it where nothing asks for it,
  as for the stem's input volumes)."""
  x, kernel = residuals
  k = kernel.shape[0]
  out = grad.shape[1:4]
  volumes = _pad_for(x, k, stride, padding)[..., 0]
  # The voxels some output reads: VALID windows may leave a remainder.
  volumes = volumes[
      tuple([slice(None)] + [slice((n - 1) * stride + k) for n in out])
  ]
  kernel_grad = jax.lax.conv_general_dilated(
      jnp.moveaxis(volumes, 0, -1)[None],
      jnp.moveaxis(grad, 0, -2),
      window_strides=(1, 1, 1),
      padding='VALID',
      rhs_dilation=(stride,) * 3,
      dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'),
  )
  _, input_vjp = jax.vjp(
      lambda inputs: _weighted_view_sum(inputs, kernel, stride, padding), x
  )
  return input_vjp(grad)[0], kernel_grad.reshape(kernel.shape)


_single_channel_conv3d.defvjp(
    _single_channel_conv3d_forward, _single_channel_conv3d_backward
)


def conv3d(
    x: jax.Array, kernel: jax.Array, stride: int = 1, padding: str = 'SAME'
) -> jax.Array:
  """Cubic 3D convolution of [B, T, H, W, C] with kernel [k, k, k, C, F],
  equal strides and SAME or VALID padding (lax.conv_general_dilated's result),
  in the form XLA:CPU runs fastest (benchmarks/RESULTS.md, "The stem's
  convolution"). One channel (every MedMNIST volume): the weighted sum of the
  k^3 shifted views, its kernel gradient one convolution of the input with the
  output gradient.
  More channels: one matrix product, the shifted views concatenated along the
  channels, [B, T', H', W', k^3 C], times the kernel as a [k^3 C, F] matrix."""
  k = kernel.shape[0]
  if x.shape[-1] == 1:
    return _single_channel_conv3d(x, kernel, stride, padding)
  return jnp.concatenate(
      _shifted_views(x, k, stride, padding), axis=-1
  ) @ kernel.reshape(k**3 * x.shape[-1], kernel.shape[-1])


def _check_tubelet_kernel(shape: Sequence[int]) -> None:
  if len(shape) != 5:
    raise ValueError(
        'Expected a 5-D (t, h, w, c_in, c_out) kernel, got ' f'{tuple(shape)}.'
    )


def central_frame_initializer(base=nn.initializers.lecun_normal()):
  """Tubelet kernel init that only looks at the central frame of the tubelet.

  The kernel has shape (t, h, w, c_in, c_out); all time slices except t // 2
  are zero, so at initialisation a tubelet embeds like a 2D patch of its
  central frame.
  """

  def init(key, shape, dtype=jnp.float32):
    _check_tubelet_kernel(shape)
    kernel = base(key, shape, dtype)
    centre = jnp.arange(shape[0]) == shape[0] // 2
    return kernel * centre[:, None, None, None, None].astype(dtype)

  return init


def average_frame_initializer(base=nn.initializers.lecun_normal()):
  """Tubelet kernel init that applies the same 2D filter to every frame.

  Like I3D "filter inflation" without a pretrained 2D filter: one time slice
  of a kernel drawn for the full 5-D shape (so its scale accounts for all t
  frames) is repeated along time.
  """

  def init(key, shape, dtype=jnp.float32):
    _check_tubelet_kernel(shape)
    kernel = base(key, shape, dtype)
    return jnp.broadcast_to(kernel[:1], shape)

  return init


TUBELET_INITIALIZERS = {
    None: nn.initializers.lecun_normal,
    'central_frame_initializer': central_frame_initializer,
    'average_frame_initializer': average_frame_initializer,
}


def check_sinusoidal_3d_width(key: str, channels: int) -> None:
  """Raises ValueError naming `key` if `channels` cannot hold a 3D sin-cos embedding."""
  if channels < 6:
    raise ValueError(
        f'{key}={channels} must be at least 6 for'
        " positional_embedding='sinusoidal_3d' (a sin and a cos channel for each"
        " of three axes), or use positional_embedding='learned_1d'."
    )


def sinusoidal_3d_position_embedding(
    grid: Sequence[int], channels: int, temperature: float = 10_000.0
) -> np.ndarray:
  """Fixed sin-cos embedding of (t, h, w) token positions, [t*h*w, channels].

  Each axis gets channels // 6 frequencies (a sin and a cos channel each), in
  the order time, height, width; channels beyond 6 * (channels // 6) are zero.
  Rows are in time-major order, matching the flattened token grid.
  """
  check_sinusoidal_3d_width('channels', channels)
  n_freq = channels // 6
  omega = 1.0 / temperature ** (np.arange(n_freq) / n_freq)
  coords = np.stack(
      np.meshgrid(*[np.arange(g) for g in grid], indexing='ij'), axis=-1
  ).reshape(-1, 3)
  parts = []
  for axis in range(3):
    phase = coords[:, axis : axis + 1] * omega[None, :]
    parts += [np.sin(phase), np.cos(phase)]
  emb = np.concatenate(parts, axis=1)
  emb = np.pad(emb, ((0, 0), (0, channels - emb.shape[1])))
  return emb.astype(np.float32)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    axis: int = -3,
    dropout_rng: Optional[jax.Array] = None,
    dropout_rate: float = 0.0,
    deterministic: bool = True,
    implementation: Optional[str] = None,
    fast_dropout: bool = False,
    sow: Optional[Callable[[jax.Array], Any]] = None,
) -> jax.Array:
  """Softmax attention along one token axis of [..., heads, depth] arrays.

  All other leading axes are batch axes. Logits and softmax are float32 (the
  result has value's dtype). Without attention dropout, attention along the
  axis next to the heads goes to jax.nn.dot_product_attention (leading axes
  merged by a free reshape; `implementation` selects its backend, falling
  back to XLA for shapes it rejects, such as cuDNN with an odd token count);
  other axes and attention dropout use an einsum over the grid as it lies, so
  no transpose is written out. `fast_dropout` picks dropout_keep_mask's fast
  mask for the attention weights. `sow`, when given, is called with the
  float32 weights before dropout, [other axes..., heads, query, key] (the
  einsum path, whatever `implementation` says).
  """
  ndim = query.ndim
  axis = axis % ndim
  dropout = not deterministic and dropout_rate > 0.0
  if axis == ndim - 3 and not dropout and sow is None:
    lead = query.shape[:axis]
    q, k, v = (a.reshape((-1,) + a.shape[axis:]) for a in (query, key, value))
    try:
      out = jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    except NotImplementedError as err:  # e.g. cuDNN and an odd token count
      logging.warning(
          'Attention implementation %r rejected shape %s (%s); ' 'using XLA.',
          implementation,
          q.shape,
          err,
      )
      out = jax.nn.dot_product_attention(q, k, v, implementation='xla')
    return out.reshape(lead + out.shape[1:])

  letters = 'abcdefg'[: ndim - 2]
  q_idx = letters[:axis] + 'q' + letters[axis + 1 :] + 'hd'
  k_idx = letters[:axis] + 'k' + letters[axis + 1 :] + 'hd'
  w_idx = letters[:axis] + letters[axis + 1 :] + 'hqk'
  logits = jnp.einsum(
      f'{q_idx},{k_idx}->{w_idx}',
      query,
      key,
      preferred_element_type=jnp.float32,
  )
  weights = jax.nn.softmax(logits / np.sqrt(query.shape[-1]), axis=-1)
  if sow is not None:
    sow(weights)
  if dropout:
    keep, scale = dropout_keep_mask(
        dropout_rng, dropout_rate, weights.shape, fast=fast_dropout
    )
    weights = jnp.where(keep, weights * scale, 0.0)
  return jnp.einsum(
      f'{w_idx},{k_idx}->{q_idx}', weights.astype(value.dtype), value
  )


def dropout_keep_mask(
    rng: jax.Array, rate: float, shape: Sequence[int], *, fast: bool = False
) -> tuple[jax.Array, float]:
  """Dropout's keep mask and the scale that keeps the expectation unchanged.

  By default nn.Dropout's: each element kept with probability 1 - rate
  (jax.random.bernoulli), scale 1 / (1 - rate). With `fast`
  (config.model.cpu_fast_layers), each element is kept when a 16-bit random
  number is at least round(rate * 2^16); each 32-bit word of jax.random.bits
  gives two of them, so half as many words are generated (random bits dominate
  dropout's cost on CPU). Its drop probability is rate to within 2^-17, and
  its scale the exact inverse of its keep probability.
  """
  if not fast:
    return jax.random.bernoulli(rng, 1.0 - rate, shape), 1.0 / (1.0 - rate)
  size = int(np.prod(shape))
  words = jax.random.bits(rng, ((size + 1) // 2,), jnp.uint32)
  halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:size]
  threshold = int(round(rate * 2**16))
  return halves.reshape(shape) >= threshold, 2**16 / (2**16 - threshold)


def factorized_dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    dropout_rng: Optional[jax.Array] = None,
    **attention_options: Any,
) -> jax.Array:
  """ViViT Model 4 attention on [batch, time, space, heads, depth] arrays.

  The first half of the heads attends over time (tokens at the same spatial
  position), the second half over space (tokens of the same time index), as
  in Scenic; the halves are concatenated back along the heads axis. Each half
  is a `dot_product_attention` with its own split of `dropout_rng` and the
  same `attention_options` (dropout_rate, deterministic, implementation,
  fast_dropout, sow: called for the time half, then the space half).
  """
  half = query.shape[-2] // 2
  rngs = (
      jax.random.split(dropout_rng) if dropout_rng is not None else (None, None)
  )
  outs = []
  for axis, heads, rng in (
      (1, slice(None, half), rngs[0]),
      (2, slice(half, None), rngs[1]),
  ):
    outs.append(
        dot_product_attention(
            query[..., heads, :],
            key[..., heads, :],
            value[..., heads, :],
            axis=axis,
            dropout_rng=rng,
            **attention_options,
        )
    )
  return jnp.concatenate(outs, axis=-2)


def as_one_hot(labels: jax.Array, logits: jax.Array) -> jax.Array:
  """Targets as one-hot: labels shaped like logits are taken as one-hot
  already, labels with one axis fewer as integer class ids."""
  labels = jnp.asarray(labels)
  if labels.ndim == logits.ndim:
    return labels
  return jax.nn.one_hot(labels, logits.shape[-1])


def softmax_cross_entropy(
    logits: jax.Array,
    one_hot: jax.Array,
    label_smoothing: Optional[float] = None,
) -> jax.Array:
  """Per-example cross-entropy; smoothing mixes in ls / num_classes."""
  if label_smoothing:
    num_classes = one_hot.shape[-1]
    one_hot = (1.0 - label_smoothing) * one_hot + label_smoothing / num_classes
  return -jnp.sum(
      one_hot * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1
  )


def topk_correct(logits: jax.Array, one_hot: jax.Array, k: int) -> jax.Array:
  """1.0 where the target class is among the k highest logits."""
  _, top = jax.lax.top_k(logits, k)
  target = jnp.argmax(one_hot, axis=-1)
  return jnp.any(top == target[:, None], axis=-1).astype(jnp.float32)


def l2_norm_squared(params) -> jax.Array:
  """Sum of squares of every leaf of a parameter tree."""
  return sum(
      jnp.sum(jnp.square(p.astype(jnp.float32)))
      for p in jax.tree_util.tree_leaves(params)
  )
