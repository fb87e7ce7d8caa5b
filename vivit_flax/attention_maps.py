"""Where a ViViT looks: attention rollout over its tokens, drawn on the voxels.

Attention rollout (Abnar and Zuidema, "Quantifying Attention Flow in Transformers", 2020)
follows how much of each input token reaches the pooled representation: every attention
sub-layer mixes the tokens by its head-averaged softmax weights A, and its residual connection
keeps each token's own state, so the sub-layer's token mixing is 0.5 * A + 0.5 * I; the mixing of
the encoder is the product of those of its sub-layers, first layer rightmost. The row of the
pooling (which tokens the head reads) times that product is the map: a distribution over the
input tokens (it sums to one). The MLPs, LayerNorms and the embedding act on each token alone
and mix nothing.

How each model mixes its tokens:
  * Model 1 ('spacetime'): one attention over all tokens per block.
  * Model 3 ('factorized_self_attention_block'): per block, attention over time (each spatial
    position on its own) and then over space (each time index on its own), or the other way
    round (attention_order), each sub-layer with its residual: the block's mixing is the
    product of the two, the second one leftmost.
  * Model 4 ('factorized_dot_product_attention'): one sub-layer whose first half of the heads
    attends over time and second half over space; averaged over all heads, its mixing is half
    the time heads' mean and half the space heads' mean, then the residual as above.
  * Model 2 ('factorized_encoder'): the spatial encoder and its pooling make each frame's token
    out of that frame's tokens only, so a token's share is its frame's share in the temporal
    encoder's map times its own share in its frame's spatial map.
Pooling: the 'token' classifier reads the class token's row (the class token's own column is
then dropped and the rest renormalised); 'map' reads the probe's head-averaged attention;
'gap' and 'gsp' every token alike; 'gmp' each token by the share of channels whose maximum it
holds.

The token map is then spread over the voxels each token embeds (`voxel_owners`): its tubelet,
through the strides of the convolutional stem; for uniform frame sampling, its patch of its
sampled frame. Voxels no token embeds (trailing voxels a patch grid drops, frames not sampled,
the margin of a VALID stem) get zero, so the voxel map is attention mass per voxel and also sums
to one. The weights come from Flax's 'intermediates' collection (model.py sows them at the
softmax when the caller collects it), computed on the einsum path whatever
config.model.attention_implementation says.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vivit_flax import model, model_utils, train_utils

_WEIGHTS = 'attention_weights'


def _weights(tree: dict, name: str) -> tuple[jax.Array, ...]:
  """The attention weights that sub-module `name` of `tree` sowed, float32."""
  return tuple(w.astype(jnp.float32) for w in tree[name][_WEIGHTS])


def _mean_heads(weights: jax.Array) -> jax.Array:
  """[..., heads, query, key] -> [..., query, key]."""
  return weights.mean(axis=-3)


def _through_tokens(v: jax.Array, weights: jax.Array) -> jax.Array:
  """v [B, N] times the mixing of attention over all tokens, weights [B, H, N, N]."""
  return jnp.einsum('bq,bqk->bk', v, _mean_heads(weights))


def _through_time(v: jax.Array, weights: jax.Array) -> jax.Array:
  """v [B, T, S] times the mixing of attention over time, weights [B, S, H, T, T]."""
  return jnp.einsum('bqs,bsqk->bks', v, _mean_heads(weights))


def _through_space(v: jax.Array, weights: jax.Array) -> jax.Array:
  """v [B, T, S] times the mixing of attention over space, weights [B, T, H, S, S]."""
  return jnp.einsum('btq,btqk->btk', v, _mean_heads(weights))


_THROUGH_AXIS = {'time': _through_time, 'space': _through_space}


def _with_residual(v: jax.Array, mixed: jax.Array) -> jax.Array:
  """v times 0.5 * A + 0.5 * I, given mixed = v times A."""
  return 0.5 * v + 0.5 * mixed


def _through_block(v: jax.Array, block: dict, attention: Any) -> jax.Array:
  """v (over a block's output tokens) times the token mixing of the block (rollout row)."""
  if attention == 'tokens':
    (weights,) = _weights(block, 'MultiHeadDotProductAttention_0')
    return _with_residual(v, _through_tokens(v, weights))
  if attention == 'factorized_heads':
    time, space = _weights(block, 'MultiHeadDotProductAttention_0')
    mixed = 0.5 * _through_time(v, time) + 0.5 * _through_space(v, space)
    return _with_residual(v, mixed)
  for axis in reversed(attention):  # The last sub-layer's mixing is leftmost.
    (weights,) = _weights(block, f'MultiHeadDotProductAttention_{axis}')
    v = _with_residual(v, _THROUGH_AXIS[axis](v, weights))
  return v


def _pooling(
    classifier: str, intermediates: dict, name: str, encoded: jax.Array
) -> jax.Array:
  """[B, N] weights with which the pooling of encoder `name` reads its N output tokens
  (class token included), summing to one."""
  b, n, _ = encoded.shape
  if classifier == 'token':
    return jnp.zeros((b, n), jnp.float32).at[:, 0].set(1.0)
  if classifier == 'map':
    head = 'MAPHead' if name == 'Transformer' else f'MAPHead_{name}'
    (weights,) = _weights(intermediates[head], 'MultiHeadDotProductAttention_0')
    return _mean_heads(weights)[:, 0]
  if classifier == 'gmp':
    holders = jax.nn.one_hot(jnp.argmax(encoded, axis=1), n, axis=1)
    return holders.mean(axis=-1)
  return jnp.full((b, n), 1.0 / n, jnp.float32)


def encoder_map(
    flax_model: model.ViViT,
    intermediates: dict,
    name: str,
    attention: Any,
    grid: Sequence[int],
) -> jax.Array:
  """Rollout map [B, N] over the N grid tokens (time-major) that encoder `name` took in,
  read through its pooling; sums to one."""
  tree = intermediates[name]
  (encoded,) = tree['__call__']
  v = _pooling(flax_model.classifier, intermediates, name, encoded)
  blocks = sorted(
      (k for k in tree if k.startswith('encoderblock_')),
      key=lambda k: int(k.rsplit('_', 1)[1]),
  )
  if attention != 'tokens':
    v = v.reshape(v.shape[0], grid[0], -1)
  for block in reversed(blocks):
    v = _through_block(v, tree[block], attention)
  v = v.reshape(v.shape[0], -1)
  if flax_model.classifier == 'token':
    v = v[:, 1:] / v[:, 1:].sum(axis=-1, keepdims=True)
  return v


def token_map(
    flax_model: model.ViViT, intermediates: dict, grid: Sequence[int]
) -> jax.Array:
  """Rollout map [B, t, h, w] over the token grid, from the 'intermediates' of one
  `apply_with_attention`; sums to one over the tokens."""
  gt, gh, gw = grid
  if flax_model.attention_type == 'factorized_encoder':
    frames = encoder_map(
        flax_model, intermediates, 'TemporalTransformer', 'tokens', (gt, 1, 1)
    )
    within = encoder_map(
        flax_model, intermediates, 'SpatialTransformer', 'tokens', (1, gh, gw)
    )
    tokens = frames[:, :, None] * within.reshape(-1, gt, gh * gw)
  else:
    tokens = encoder_map(
        flax_model,
        intermediates,
        'Transformer',
        flax_model.token_attention(),
        grid,
    )
  return tokens.reshape(-1, gt, gh, gw)


def _tile_owners(size: int, patch: int, tokens: int) -> np.ndarray:
  """Token index of each of `size` voxels cut into `tokens` patches of `patch`; -1 beyond."""
  owners = np.arange(size) // patch
  return np.where(owners < tokens, owners, -1)


def _through_stem_layer(
    owners: np.ndarray, size: int, kernel: int, stride: int, padding: str
) -> np.ndarray:
  """Owners of the `size` input voxels of a stem convolution whose output voxels have
  `owners`: each output voxel owns the stride-wide cell of input voxels around the centre of
  its kernel window (the voxel at the centre for stride 1)."""
  pad_before = (
      model_utils.same_padding(size, kernel, stride)[0]
      if padding == 'SAME'
      else 0
  )
  first = int(np.floor((kernel - stride) / 2)) - pad_before
  out = (np.arange(size) - first) // stride
  inside = (np.arange(size) >= first) & (out < len(owners))
  return np.where(inside, owners[np.clip(out, 0, len(owners) - 1)], -1)


def voxel_owners(
    flax_model: model.ViViT, input_thw: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """For each axis (time, height, width) of a (T, H, W) input, the index along that axis of
  the token that embeds each voxel, -1 where none does."""
  input_thw = tuple(int(s) for s in input_thw)
  grid = flax_model.token_grid(input_thw)
  ph, pw, *pt = flax_model.patch_size
  if flax_model.tokenizer == 'temporal_sampling':
    time = np.full(input_thw[0], -1)
    time[model_utils.sample_frame_indices(input_thw[0], grid[0])] = np.arange(
        grid[0]
    )
    return (
        time,
        _tile_owners(input_thw[1], ph, grid[1]),
        _tile_owners(input_thw[2], pw, grid[2]),
    )
  k, padding = flax_model.stem_kernel_size, flax_model.stem_padding
  sizes = [input_thw]
  for stride in flax_model.stem_strides:
    sizes.append(
        tuple(
            model_utils.stem_output_size(n, k, stride, padding)
            for n in sizes[-1]
        )
    )
  owners = []
  for axis, patch in enumerate((pt[0], ph, pw)):
    o = _tile_owners(sizes[-1][axis], patch, grid[axis])
    for layer in reversed(range(len(flax_model.stem_strides))):
      o = _through_stem_layer(
          o, sizes[layer][axis], k, flax_model.stem_strides[layer], padding
      )
    owners.append(o)
  return owners[0], owners[1], owners[2]


def _spread(
    owners: Sequence[np.ndarray], grid: Sequence[int]
) -> list[np.ndarray]:
  """Per axis, the [voxels, tokens] 0/1 matrix of which token embeds which voxel."""
  return [
      (o[:, None] == np.arange(g)[None, :]).astype(np.float32)
      for o, g in zip(owners, grid)
  ]


def upsample(tokens: jax.Array, owners: Sequence[np.ndarray]) -> jax.Array:
  """Token map [B, t, h, w] -> voxel map [B, T, H, W]: each token's mass spread evenly over
  the voxels it embeds (`voxel_owners`), zero on the others; sums as the token map does.
  """
  spread = _spread(owners, tokens.shape[1:])
  counts = np.einsum('t,h,w->thw', *(s.sum(axis=0) for s in spread))
  return jnp.einsum('bthw,Tt,Hh,Ww->bTHW', tokens / counts, *spread)


def per_token(
    voxels: np.ndarray, owners: Sequence[np.ndarray], grid: Sequence[int]
) -> np.ndarray:
  """Voxel values [B, T, H, W] summed over each token's voxels: [B, t, h, w] (undoes
  `upsample`)."""
  return np.einsum('bTHW,Tt,Hh,Ww->bthw', voxels, *_spread(owners, grid))


def _is_encoder_call(module: nn.Module, method: str) -> bool:
  return isinstance(module, model.Encoder) and method == '__call__'


def apply_with_attention(
    flax_model: model.ViViT, params: Any, x: jax.Array
) -> tuple[jax.Array, dict]:
  """Logits of clips x [B, T, H, W, C] and the 'intermediates' they sow: every attention's
  weights and each encoder's output (its '__call__')."""
  logits, state = flax_model.apply(
      {'params': params},
      x,
      train=False,
      mutable=['intermediates'],
      capture_intermediates=_is_encoder_call,
  )
  return logits, state['intermediates']


def explain(
    flax_model: model.ViViT,
    params: Any,
    x: jax.Array,
    flip_axes: Sequence[int] = (),
    shift: int = 0,
) -> tuple[jax.Array, jax.Array]:
  """Class probabilities [B, num_classes] and voxel attention maps [B, T, H, W] of clips x
  [B, T, H, W, C].

  With test-time views (`flip_axes`, `shift`: train_utils.test_time_views), the probabilities
  are averaged over the views as train_utils.predict does, and so are the maps, each pulled
  back to the input's voxel grid by the transpose of its view (a flip undone; a shift undone,
  the mass shifted out of the volume lost).
  """
  owners = voxel_owners(flax_model, x.shape[1:4])
  grid = flax_model.token_grid(x.shape[1:4])
  views = train_utils.test_time_views(x, flip_axes, shift)
  probabilities, maps = [], []
  for view in views:
    logits, intermediates = apply_with_attention(flax_model, params, view)
    probabilities.append(jax.nn.softmax(logits.astype(jnp.float32)))
    maps.append(upsample(token_map(flax_model, intermediates, grid), owners))
  pull_back = jax.linear_transpose(
      lambda m: [
          v[..., 0]
          for v in train_utils.test_time_views(m[..., None], flip_axes, shift)
      ],
      maps[0],
  )
  (voxels,) = pull_back(maps)
  return sum(probabilities) / len(views), voxels / len(views)
