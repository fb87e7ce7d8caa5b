"""ViViT video classifiers (Arnab et al., ICCV 2021) as Flax modules with
Scenic's parameter names, and the Scenic-style classification model that
builds them from a config and supplies the loss and metrics."""

import dataclasses
import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vivit_flax import default_config, model_utils
from vivit_flax.config_checks import (
    check_choice,
    check_fraction,
    check_non_negative,
    check_positive,
)

ATTENTION_TYPES = (
    'spacetime',
    'factorized_encoder',
    'factorized_self_attention_block',
    'factorized_dot_product_attention',
)
# Scenic has no class token for Models 3 and 4.
TOKENLESS_ATTENTION_TYPES = (
    'factorized_self_attention_block',
    'factorized_dot_product_attention',
)
CLASSIFIERS = ('token', 'gap', 'gmp', 'gsp', 'map')
POSITIONAL_EMBEDDINGS = ('learned_1d', 'sinusoidal_3d', 'none')
# Model 3 sub-layer order; Scenic spells it 'time_space' / 'space_time'.
ATTENTION_ORDERS = {
    'temporal_spatial': ('time', 'space'),
    'time_space': ('time', 'space'),
    'spatial_temporal': ('space', 'time'),
    'space_time': ('space', 'time'),
}
ATTENTION_IMPLEMENTATIONS = (None, 'xla', 'cudnn')
MODEL_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# The pmap axis over every device of every process: metrics are summed over it, and the trainer
# (train_utils) pmaps its steps with it.
AXIS_NAME = 'batch'
_POOLS = {'gap': jnp.mean, 'gmp': jnp.max, 'gsp': jnp.sum}
# Attention axis of the projected queries [batch, ..., heads, depth]: 'tokens'
# for a flat [B, N] token list, 'time'/'space' for a [B, T, S] token grid.
_ATTENTION_AXES = {'tokens': -3, 'time': 1, 'space': 2}


@dataclasses.dataclass(frozen=True)
class TransformerSize:
  """Width of the attention and MLP and depth of one transformer encoder."""

  num_heads: int
  mlp_dim: int
  num_layers: int


def _attention_fn(
    mode: str, implementation: Optional[str], fast_dropout: bool = False
):
  """attention_fn for nn.MultiHeadDotProductAttention.

  mode: 'tokens', 'time' or 'space' (attention along that axis), or
  'factorized_heads' (Model 4: half the heads over time, half over space).
  fast_dropout: model_utils.dropout_keep_mask's fast mask for attention dropout.
  Given `module` (nn.MultiHeadDotProductAttention's sow_weights), the float32
  softmax weights are sown into its 'intermediates' as 'attention_weights'
  (model_utils.dot_product_attention's `sow`; attention_maps reads them).
  """
  if mode == 'factorized_heads':
    attend = model_utils.factorized_dot_product_attention
  else:
    attend = functools.partial(
        model_utils.dot_product_attention, axis=_ATTENTION_AXES[mode]
    )

  def attention_fn(
      query,
      key,
      value,
      dropout_rng=None,
      dropout_rate=0.0,
      deterministic=True,
      module=None,
  ):
    return attend(
        query,
        key,
        value,
        dropout_rng=dropout_rng,
        dropout_rate=dropout_rate,
        deterministic=deterministic,
        implementation=implementation,
        fast_dropout=fast_dropout,
        sow=None
        if module is None
        else functools.partial(
            module.sow, 'intermediates', 'attention_weights'
        ),
    )

  return attention_fn


class FastDropout(nn.Module):
  """Inverted dropout like nn.Dropout, with model_utils.dropout_keep_mask's
  fast mask: half the random bits of nn.Dropout's (config.model.cpu_fast_layers).
  """

  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    if deterministic or not self.rate:
      return x
    keep, scale = model_utils.dropout_keep_mask(
        self.make_rng('dropout'), self.rate, x.shape, fast=True
    )
    return jnp.where(keep, x * jnp.asarray(scale, x.dtype), 0)


def _dropout(rate: float, cpu_fast_layers: bool) -> nn.Module:
  """nn.Dropout, or FastDropout with config.model.cpu_fast_layers."""
  return FastDropout(rate) if cpu_fast_layers else nn.Dropout(rate)


class MlpBlock(nn.Module):
  """Transformer feed-forward block: Dense, GELU, dropout, Dense, dropout."""

  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  cpu_fast_layers: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    dense = functools.partial(
        nn.Dense,
        dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6),
    )
    dropout = functools.partial(
        _dropout, self.dropout_rate, self.cpu_fast_layers
    )
    y = nn.gelu(dense(self.mlp_dim, name='Dense_0')(x))
    y = dropout()(y, deterministic=deterministic)
    y = dense(x.shape[-1], name='Dense_1')(y)
    return dropout()(y, deterministic=deterministic)


class DropPath(nn.Module):
  """Stochastic depth: in training, zeroes a residual branch for each example
  with probability `rate` (not rescaled, as in Scenic)."""

  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    if deterministic or not self.rate:
      return x
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = jax.random.bernoulli(
        self.make_rng('dropout'), 1.0 - self.rate, shape
    )
    return x * keep.astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class LayerOptions:
  """What every layer of an encoder shares: its dropout rates, activation dtype, the
  attention kernel (`attention_implementation`) and `cpu_fast_layers`."""

  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  attention_implementation: Optional[str] = None
  cpu_fast_layers: bool = False


class EncoderBlock(nn.Module):
  """Pre-LayerNorm transformer block: self-attention sub-layer(s), then an MLP,
  each branch with dropout, stochastic depth and a residual connection.

  attention: 'tokens' (Models 1 and 2, input [B, N, D]); 'factorized_heads'
  (Model 4, input [B, T, S, D]); or an ordered pair of 'time'/'space'
  (Model 3, input [B, T, S, D]: one attention sub-layer per axis, each with
  its own LayerNorm, named by axis as in Scenic). When the caller collects
  'intermediates', each attention sub-layer sows its softmax weights there.
  """

  mlp_dim: int
  num_heads: int
  attention: Any = 'tokens'
  droplayer_p: float = 0.0
  options: LayerOptions = LayerOptions()

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    if isinstance(self.attention, str):
      sublayers = [(self.attention, '0')]
      mlp_names = ('LayerNorm_1', 'MlpBlock_0')
    else:
      sublayers = [(axis, axis) for axis in self.attention]
      mlp_names = ('LayerNorm_mlp', 'MlpBlock')
    o = self.options
    for mode, suffix in sublayers:
      y = nn.LayerNorm(dtype=o.dtype, name=f'LayerNorm_{suffix}')(x)
      y = nn.MultiHeadDotProductAttention(
          num_heads=self.num_heads,
          dtype=o.dtype,
          kernel_init=nn.initializers.xavier_uniform(),
          dropout_rate=o.attention_dropout_rate,
          attention_fn=_attention_fn(
              mode, o.attention_implementation, o.cpu_fast_layers
          ),
          name=f'MultiHeadDotProductAttention_{suffix}',
      )(
          y,
          deterministic=deterministic,
          sow_weights=self.is_mutable_collection('intermediates'),
      )
      y = _dropout(o.dropout_rate, o.cpu_fast_layers)(
          y, deterministic=deterministic
      )
      x = x + DropPath(self.droplayer_p)(y, deterministic=deterministic)
    y = nn.LayerNorm(dtype=o.dtype, name=mlp_names[0])(x)
    y = MlpBlock(
        self.mlp_dim,
        o.dropout_rate,
        o.dtype,
        o.cpu_fast_layers,
        name=mlp_names[1],
    )(y, deterministic=deterministic)
    return x + DropPath(self.droplayer_p)(y, deterministic=deterministic)


class FastPatchEmbedding(nn.Module):
  """The patch embedding of config.model.cpu_fast_layers: the VALID nn.Conv
  with stride = kernel = patch that embeds non-overlapping (t, h, w) patches
  of [B, T, H, W, C] clips into [B, T/t, H/h, W/w, features] (trailing voxels
  dropped), with nn.Conv's parameters ('kernel' [t, h, w, C, features], or
  [h, w, C, features] when kernel_dims=2 and t=1, and 'bias'), computed as one
  patch-matrix product, whose gradient XLA:CPU computes faster than a strided
  convolution's."""

  features: int
  patch: tuple[int, int, int]
  kernel_dims: int = 3
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, c = x.shape[0], x.shape[-1]
    grid = [s // p for s, p in zip(x.shape[1:4], self.patch)]
    kernel = self.param(
        'kernel',
        self.kernel_init,
        self.patch[3 - self.kernel_dims :] + (c, self.features),
        jnp.float32,
    )
    bias = self.param(
        'bias', nn.initializers.zeros, (self.features,), jnp.float32
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    x = x[
        :,
        : grid[0] * self.patch[0],
        : grid[1] * self.patch[1],
        : grid[2] * self.patch[2],
    ]
    # The patch matrix [B T H W, t h w c] is formed once, as one array: the forward product
    # and the kernel's gradient then read the same copy (an einsum over the 8-D view made
    # XLA:CPU rearrange the voxels, with a convolutional stem's work fused in, once for each).
    patches = (
        x.reshape(
            b,
            grid[0],
            self.patch[0],
            grid[1],
            self.patch[1],
            grid[2],
            self.patch[2],
            c,
        )
        .transpose(0, 1, 3, 5, 2, 4, 6, 7)
        .reshape(b * math.prod(grid), -1)
    )
    y = patches @ kernel.reshape(-1, self.features)
    return y.reshape(b, *grid, self.features) + bias


class ConvStem(nn.Module):
  """Convolutional stem before the tubelet embedding ("Early Convolutions Help
  Transformers See Better", Xiao et al. 2021, in 3D): per entry of `features`,
  a cubic convolution of `kernel_size` with stride `strides[i]`, `padding`
  'SAME' or 'VALID', and a ReLU. Every token then embeds local shape features
  of its tubelet and of the voxels around it, not only a linear map of its own
  voxels. The convolution is model_utils.conv3d, written in the forms XLA:CPU
  runs faster than its own 3D convolution.
  """

  features: tuple[int, ...]
  strides: tuple[int, ...]
  kernel_size: int = 3
  padding: str = 'SAME'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    for i, (features, stride) in enumerate(zip(self.features, self.strides)):
      kernel = self.param(
          f'conv_{i}',
          nn.initializers.lecun_normal(),
          (k, k, k, x.shape[-1], features),
          jnp.float32,
      )
      bias = self.param(
          f'bias_{i}', nn.initializers.zeros, (features,), jnp.float32
      )
      x, kernel, bias = nn.dtypes.promote_dtype(
          x, kernel, bias, dtype=self.dtype
      )
      x = nn.relu(model_utils.conv3d(x, kernel, stride, self.padding) + bias)
    return x


class MAPHead(nn.Module):
  """Multihead attention pooling (big_vision's 'map' head; Lee et al. 2019): a
  learned probe attends over the tokens, followed by a residual MLP. Unlike a
  mean over every token, it can weight the few tokens that hold the object.
  When the caller collects 'intermediates', the probe's attention weights
  [B, heads, 1, N] are sown there."""

  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, _, d = x.shape
    probe = self.param(
        'probe', nn.initializers.xavier_uniform(), (1, 1, d), jnp.float32
    )
    x = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
    )(
        jnp.broadcast_to(probe.astype(x.dtype), (b, 1, d)),
        x,
        sow_weights=self.is_mutable_collection('intermediates'),
    )
    y = nn.LayerNorm(dtype=self.dtype)(x)
    x = x + MlpBlock(self.mlp_dim, dtype=self.dtype)(y, deterministic=True)
    return x[:, 0]


class AddPositionEmbs(nn.Module):
  """Adds a learned [1, N, D] position embedding (float32 parameter) to the N
  tokens of a sequence, or, given `token_indices` [B, n], to n of them: the
  ones at those positions of the N-token sequence (num_tokens = N)."""

  num_tokens: Optional[int] = None

  @nn.compact
  def __call__(
      self, x: jax.Array, token_indices: Optional[jax.Array] = None
  ) -> jax.Array:
    pe = self.param(
        'pos_embedding',
        nn.initializers.normal(stddev=0.02),
        (1, self.num_tokens or x.shape[1], x.shape[-1]),
        jnp.float32,
    )
    if token_indices is not None:
      pe = jnp.take(pe[0], token_indices, axis=0)
    return x + pe.astype(x.dtype)


class Encoder(nn.Module):
  """Transformer encoder over the tokens of a (t, h, w) grid.

  Input [B, n_cls + t*h*w, D]: time-major grid tokens after n_cls (0 or 1)
  class tokens. Adds the position embedding, applies dropout, the blocks
  (block i has stochastic depth i / (L - 1) * stochastic_droplayer_rate) and
  a final float32 LayerNorm. For grid attention (Models 3 and 4) the tokens
  are viewed as [B, t, h*w, D] for the whole stack.

  With `token_indices` [B, n] (masked pretraining), the input is n of the
  grid's t*h*w tokens, without class token, and gets the position embeddings
  of those grid positions; for grid attention they must be the same number
  of tokens at every time index, time-major (tube masking), viewed as
  [B, t, n/t, D].
  """

  grid: tuple[int, int, int]
  size: TransformerSize
  attention: Any = 'tokens'
  positional_embedding: str = 'learned_1d'
  stochastic_droplayer_rate: float = 0.0
  options: LayerOptions = LayerOptions()

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      *,
      train: bool,
      token_indices: Optional[jax.Array] = None,
  ) -> jax.Array:
    b, n, d = x.shape
    if self.positional_embedding == 'learned_1d':
      x = AddPositionEmbs(
          num_tokens=None if token_indices is None else int(np.prod(self.grid)),
          name='posembed_input',
      )(x, token_indices)
    elif self.positional_embedding == 'sinusoidal_3d':
      pe = model_utils.sinusoidal_3d_position_embedding(self.grid, d)
      if token_indices is None:
        pe = np.pad(pe, ((n - pe.shape[0], 0), (0, 0)))  # none for a cls token
      else:
        pe = jnp.take(jnp.asarray(pe), token_indices, axis=0)
      x = x + jnp.asarray(pe, x.dtype)
    x = _dropout(self.options.dropout_rate, self.options.cpu_fast_layers)(
        x, deterministic=not train
    )

    on_grid = self.attention != 'tokens'
    if on_grid:
      x = x.reshape(b, self.grid[0], -1, d)
    num_layers = self.size.num_layers
    for i in range(num_layers):
      x = EncoderBlock(
          mlp_dim=self.size.mlp_dim,
          num_heads=self.size.num_heads,
          attention=self.attention,
          droplayer_p=(
              i / max(num_layers - 1, 1) * self.stochastic_droplayer_rate
          ),
          options=self.options,
          name=f'encoderblock_{i}',
      )(x, deterministic=not train)
    if on_grid:
      x = x.reshape(b, n, d)
    return nn.LayerNorm(dtype=jnp.float32, name='encoder_norm')(x)


class ViViT(nn.Module):
  """ViViT classifier for clips x of shape [B, T, H, W, C].

  attention_type picks the model: 'spacetime' (Model 1, joint attention over
  all tokens), 'factorized_encoder' (Model 2: spatial transformer per time
  index, pooled per frame, then a temporal transformer),
  'factorized_self_attention_block' (Model 3: per block, attention over time
  and over space in attention_order) or 'factorized_dot_product_attention'
  (Model 4: half the heads over time, half over space). Models 1, 3 and 4 use
  `transformer`; Model 2 `spatial_transformer` and `temporal_transformer`.

  Tokens come from tubelets (tokenizer '3d_conv', a strided 3D convolution
  with patch_size (h, w, t)) or from 2D (h, w) patches of n_sampled_frames
  uniformly sampled frames ('temporal_sampling'), optionally after a
  convolutional stem (stem_features, stem_strides, stem_kernel_size,
  stem_padding: ConvStem) whose output the tubelets then tile. Parameters are
  float32; activations use `dtype`; logits are float32. attention_implementation is
  passed to jax.nn.dot_product_attention (None/'xla', or 'cudnn' flash
  attention in bfloat16, with XLA for shapes cuDNN rejects such as an odd
  token count) wherever attention runs along the token axis without
  attention dropout; other attention is an XLA einsum.

  cpu_fast_layers (config.model.cpu_fast_layers) swaps two stock layers for
  versions tuned for XLA:CPU, with the same parameters: the patch embedding's
  nn.Conv for FastPatchEmbedding (one matrix product) and nn.Dropout's mask,
  also in attention dropout, for one drawn from half the random bits
  (model_utils.dropout_keep_mask).
  """

  num_classes: int
  hidden_size: int
  patch_size: tuple[int, ...]
  transformer: Optional[TransformerSize] = None
  spatial_transformer: Optional[TransformerSize] = None
  temporal_transformer: Optional[TransformerSize] = None
  attention_type: str = 'spacetime'
  attention_order: str = 'time_space'
  tokenizer: str = '3d_conv'
  n_sampled_frames: Optional[int] = None
  kernel_init_method: Optional[str] = None
  drop_remainder: bool = False
  classifier: str = 'gap'
  representation_size: Optional[int] = None
  positional_embedding: str = 'learned_1d'
  stem_features: tuple[int, ...] = ()
  stem_strides: tuple[int, ...] = ()
  stem_kernel_size: int = 3
  stem_padding: str = 'SAME'
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  stochastic_droplayer_rate: float = 0.0
  return_prelogits: bool = False
  dtype: Any = jnp.float32
  attention_implementation: Optional[str] = None
  cpu_fast_layers: bool = False

  def __post_init__(self):
    self._validate()
    super().__post_init__()

  def _validate(self) -> None:
    """Raises ValueError, saying what to change, for an unusable setup."""
    check_choice(
        'config.model.attention_config.type',
        self.attention_type,
        ATTENTION_TYPES,
    )
    check_choice('config.model.classifier', self.classifier, CLASSIFIERS)
    check_choice(
        'config.model.positional_embedding',
        self.positional_embedding,
        POSITIONAL_EMBEDDINGS,
    )
    check_choice(
        'config.model.attention_config.attention_order',
        self.attention_order,
        list(ATTENTION_ORDERS),
    )
    check_choice(
        'config.model.temporal_encoding_config.method',
        self.tokenizer,
        model_utils.TEMPORAL_ENCODINGS,
    )
    check_choice(
        'config.model.temporal_encoding_config.kernel_init_method',
        self.kernel_init_method,
        list(model_utils.TUBELET_INITIALIZERS),
    )
    check_choice(
        'config.model.attention_implementation',
        self.attention_implementation,
        ATTENTION_IMPLEMENTATIONS,
    )
    if self.attention_implementation == 'cudnn' and self.dtype != jnp.bfloat16:
      raise ValueError(
          "config.model.attention_implementation='cudnn' (flash attention) "
          "needs config.model_dtype_str='bfloat16'."
      )
    check_positive('config.model.hidden_size', self.hidden_size)
    if self.positional_embedding == 'sinusoidal_3d':
      model_utils.check_sinusoidal_3d_width(
          'config.model.hidden_size', self.hidden_size
      )
    check_positive('config.model.representation_size', self.representation_size)
    check_fraction('config.model.dropout_rate', self.dropout_rate)
    check_fraction(
        'config.model.attention_dropout_rate', self.attention_dropout_rate
    )
    # The last layer's rate: 1 always drops it (Scenic's linear schedule).
    check_fraction(
        'config.model.stochastic_droplayer_rate',
        self.stochastic_droplayer_rate,
        allow_one=True,
    )
    if (
        self.classifier == 'token'
        and self.attention_type in TOKENLESS_ATTENTION_TYPES
    ):
      pools = [c for c in CLASSIFIERS if c != 'token']
      with_token = [
          a for a in ATTENTION_TYPES if a not in TOKENLESS_ATTENTION_TYPES
      ]
      raise ValueError(
          f"classifier='token' is not supported with attention type "
          f"'{self.attention_type}' (as in Scenic): set config.model.classifier"
          f' to one of {pools}, or use an attention type among {with_token}.'
      )
    if len(self.stem_features) != len(self.stem_strides) or any(
        s < 1 for s in self.stem_strides
    ):
      raise ValueError(
          'config.model.stem.features and config.model.stem.strides need one '
          f'entry per convolution, strides >= 1; got {self.stem_features} and '
          f'{self.stem_strides}.'
      )
    check_choice(
        'config.model.stem.padding',
        self.stem_padding,
        model_utils.STEM_PADDINGS,
    )
    check_positive('config.model.stem.kernel_size', self.stem_kernel_size)
    if self.stem_features and self.tokenizer != '3d_conv':
      raise ValueError(
          'config.model.stem needs temporal_encoding_config.method=3d_conv: '
          'a stem sees the whole volume, so frames are not sampled.'
      )
    if self.attention_type == 'factorized_encoder':
      sizes = {
          'spatial_transformer': self.spatial_transformer,
          'temporal_transformer': self.temporal_transformer,
      }
    else:
      sizes = {'': self.transformer}
    for where, size in sizes.items():
      prefix = f'config.model.{where + "." if where else ""}'
      key = f'{prefix}num_heads'
      if size is None:
        needs = where or 'num_heads, mlp_dim and num_layers'
        raise ValueError(
            f"attention type '{self.attention_type}' needs "
            f'config.model.{needs}.'
        )
      for field in ('num_heads', 'mlp_dim', 'num_layers'):
        check_positive(f'{prefix}{field}', getattr(size, field))
      if size.num_heads < 1 or self.hidden_size % size.num_heads:
        raise ValueError(
            f'{key}={size.num_heads} does not divide hidden_size='
            f'{self.hidden_size}: use a head count in '
            f'{model_utils.divisors(self.hidden_size)}, or change '
            'config.model.hidden_size.'
        )
    if (
        self.attention_type == 'factorized_dot_product_attention'
        and self.transformer.num_heads % 2
    ):
      raise ValueError(
          "attention type 'factorized_dot_product_attention' splits the heads "
          'in half (time, space), so config.model.num_heads must be even; got '
          f'{self.transformer.num_heads}.'
      )

  def token_grid(self, input_thw: Sequence[int]) -> tuple[int, int, int]:
    """Tokens along (time, height, width) for clips of shape (T, H, W)."""
    if self.stem_padding == 'SAME':
      stride = int(np.prod(self.stem_strides))
      if any(size % stride for size in input_thw):
        raise ValueError(
            f"The stem's strides {self.stem_strides} reduce the input by"
            f' {stride}, which does not divide the input size'
            f' {tuple(input_thw)}: change config.model.stem.strides.'
        )
    for stride in self.stem_strides:
      input_thw = tuple(
          model_utils.stem_output_size(
              size, self.stem_kernel_size, stride, self.stem_padding
          )
          for size in input_thw
      )
    return model_utils.token_grid(
        input_thw,
        self.patch_size,
        drop_remainder=self.drop_remainder,
        tokenizer=self.tokenizer,
        n_sampled_frames=self.n_sampled_frames,
    )

  def token_attention(self) -> Any:
    """The `attention` of the encoder blocks of Models 1, 3 and 4 (EncoderBlock)."""
    return {
        'spacetime': 'tokens',
        'factorized_self_attention_block': ATTENTION_ORDERS[
            self.attention_order
        ],
        'factorized_dot_product_attention': 'factorized_heads',
    }[self.attention_type]

  def layer_options(self) -> LayerOptions:
    """The options every encoder layer of this model shares."""
    return LayerOptions(
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        dtype=self.dtype,
        attention_implementation=self.attention_implementation,
        cpu_fast_layers=self.cpu_fast_layers,
    )

  def _patch_embedding(self, patch: tuple[int, ...], kernel_init: Any):
    """The linear embedding of `patch`-sized patches (time first; a 2D patch
    embeds each frame): a VALID nn.Conv with stride = kernel = patch, or
    FastPatchEmbedding with cpu_fast_layers."""
    if self.cpu_fast_layers:
      return FastPatchEmbedding(
          self.hidden_size,
          (1,) * (3 - len(patch)) + patch,
          kernel_dims=len(patch),
          kernel_init=kernel_init,
          dtype=self.dtype,
          name='embedding',
      )
    return nn.Conv(
        self.hidden_size,
        kernel_size=patch,
        strides=patch,
        padding='VALID',
        kernel_init=kernel_init,
        dtype=self.dtype,
        name='embedding',
    )

  def _embed(self, x: jax.Array) -> jax.Array:
    """Clips [B, T, H, W, C] -> token grid [B, t, h, w, hidden_size]."""
    t_in, h_in, w_in = x.shape[1:4]
    gt, gh, gw = self.token_grid((t_in, h_in, w_in))
    ph, pw = self.patch_size[:2]
    if self.tokenizer == 'temporal_sampling':
      frames = (
          x if gt == t_in else x[:, model_utils.sample_frame_indices(t_in, gt)]
      )
      return self._patch_embedding((ph, pw), nn.initializers.lecun_normal())(
          frames
      )
    if self.stem_features:
      x = ConvStem(
          self.stem_features,
          self.stem_strides,
          self.stem_kernel_size,
          self.stem_padding,
          dtype=self.dtype,
          name='stem',
      )(x)
    kernel_init = model_utils.TUBELET_INITIALIZERS[self.kernel_init_method]()
    return self._patch_embedding((self.patch_size[2], ph, pw), kernel_init)(x)

  def _encode_and_pool(
      self,
      x: jax.Array,
      grid: tuple[int, int, int],
      size: TransformerSize,
      attention: Any,
      name: str,
      train: bool,
  ) -> jax.Array:
    """[B, N, D] tokens -> [B, D]: class token, encoder `name`, pooling."""
    b, _, d = x.shape
    if self.classifier == 'token':
      cls_name = 'cls' if name == 'Transformer' else f'cls_{name}'
      cls = self.param(cls_name, nn.initializers.zeros, (1, 1, d), jnp.float32)
      x = jnp.concatenate(
          [jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1
      )
    x = Encoder(
        grid=grid,
        size=size,
        attention=attention,
        positional_embedding=self.positional_embedding,
        stochastic_droplayer_rate=self.stochastic_droplayer_rate,
        options=self.layer_options(),
        name=name,
    )(x, train=train)
    if self.classifier == 'token':
      return x[:, 0]
    if self.classifier == 'map':
      head_name = 'MAPHead' if name == 'Transformer' else f'MAPHead_{name}'
      return MAPHead(
          size.num_heads, size.mlp_dim, dtype=self.dtype, name=head_name
      )(x)
    return _POOLS[self.classifier](x, axis=1)

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      *,
      train: bool,
      return_prelogits: Optional[bool] = None,
  ) -> jax.Array:
    """Logits [B, num_classes] (float32), or the pre-logits representation
    when return_prelogits (argument, else attribute) is true."""
    tokens = self._embed(jnp.asarray(x, self.dtype))
    b, gt, gh, gw, d = tokens.shape
    if self.attention_type == 'factorized_encoder':
      frames = self._encode_and_pool(
          tokens.reshape(b * gt, gh * gw, d),
          (1, gh, gw),
          self.spatial_transformer,
          'tokens',
          'SpatialTransformer',
          train,
      )
      x = self._encode_and_pool(
          frames.reshape(b, gt, d).astype(self.dtype),
          (gt, 1, 1),
          self.temporal_transformer,
          'tokens',
          'TemporalTransformer',
          train,
      )
    else:
      x = self._encode_and_pool(
          tokens.reshape(b, gt * gh * gw, d),
          (gt, gh, gw),
          self.transformer,
          self.token_attention(),
          'Transformer',
          train,
      )

    if self.representation_size is not None:
      x = nn.tanh(nn.Dense(self.representation_size, name='pre_logits')(x))
    if self.return_prelogits if return_prelogits is None else return_prelogits:
      return x
    return nn.Dense(
        self.num_classes,
        kernel_init=nn.initializers.zeros,
        dtype=jnp.float32,
        name='output_projection',
    )(x)


def _transformer_size(
    cfg: ml_collections.ConfigDict,
) -> TransformerSize | None:
  """The transformer `cfg` sizes; None while one of its sizes is unset."""
  if None in (cfg.num_heads, cfg.mlp_dim, cfg.num_layers):
    return None
  return TransformerSize(
      num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim, num_layers=cfg.num_layers
  )


class ViViTClassificationModel:
  """Scenic-style n-way video classification model around a ViViT module.

  Attributes:
    config: the experiment ConfigDict (Scenic keys; see INTERFACES.md).
    dataset_meta_data: dict with num_classes and, optionally, input_shape
      (-1, T, H, W, C); with input_shape, bad patch sizes fail here.
    flax_model: the ViViT module.
  """

  def __init__(
      self, config: ml_collections.ConfigDict, dataset_meta_data: dict
  ):
    self.config = default_config.with_defaults(config)
    self.dataset_meta_data = dataset_meta_data
    check_fraction('config.label_smoothing', self.config.label_smoothing)
    check_non_negative('config.l2_decay_factor', self.config.l2_decay_factor)
    self.flax_model = self.build_flax_model()
    if (
        self.flax_model.attention_implementation == 'cudnn'
        and jax.devices()[0].platform != 'gpu'
    ):
      raise ValueError(
          "config.model.attention_implementation='cudnn' needs NVIDIA GPUs; this "
          f"run has {jax.devices()[0].platform} devices. Use None or 'xla'."
      )
    input_shape = dataset_meta_data.get('input_shape')
    if input_shape is not None:
      self.flax_model.token_grid(tuple(input_shape)[1:4])

  def build_flax_model(self) -> ViViT:
    """The ViViT module for config.model (missing keys: default_config's)."""
    m = self.config.model
    dtype_str = self.config.model_dtype_str
    check_choice('config.model_dtype_str', dtype_str, list(MODEL_DTYPES))
    size = m.patches.size
    if not size or any(
        isinstance(s, bool) or not isinstance(s, int) for s in size
    ):
      raise ValueError(
          f'config.model.patches.size={tuple(size or ())!r} must be ints (h, w, t).'
      )
    attention_type = m.attention_config.type
    encoding, stem = m.temporal_encoding_config, m.stem
    if attention_type == 'factorized_encoder':
      sizes = {
          key: _transformer_size(m[key])
          for key in ('spatial_transformer', 'temporal_transformer')
      }
    else:
      sizes = {'transformer': _transformer_size(m)}
    return ViViT(
        num_classes=self.dataset_meta_data['num_classes'],
        hidden_size=m.hidden_size,
        patch_size=tuple(m.patches.size),
        attention_type=attention_type,
        attention_order=m.attention_config.attention_order,
        tokenizer=encoding.method,
        n_sampled_frames=encoding.n_sampled_frames,
        kernel_init_method=encoding.kernel_init_method,
        drop_remainder=m.patches.drop_remainder,
        classifier=m.classifier,
        representation_size=m.representation_size,
        positional_embedding=m.positional_embedding,
        dropout_rate=m.dropout_rate,
        attention_dropout_rate=m.attention_dropout_rate,
        stochastic_droplayer_rate=m.stochastic_droplayer_rate,
        stem_features=tuple(stem.features),
        stem_strides=tuple(stem.strides),
        stem_kernel_size=stem.kernel_size,
        stem_padding=stem.padding,
        return_prelogits=m.return_prelogits,
        dtype=MODEL_DTYPES[dtype_str],
        attention_implementation=m.attention_implementation,
        cpu_fast_layers=(
            jax.default_backend() == 'cpu'
            if m.cpu_fast_layers is None
            else m.cpu_fast_layers
        ),
        **sizes,
    )

  def init_variables(self, rng: jax.Array, batch_size: int = 1) -> dict:
    """Initial variables for inputs of dataset_meta_data['input_shape']."""
    shape = (batch_size,) + tuple(self.dataset_meta_data['input_shape'])[1:]
    init = jax.jit(functools.partial(self.flax_model.init, train=False))
    return init({'params': rng}, jnp.zeros(shape, jnp.float32))

  def class_weights(self) -> np.ndarray:
    """Balanced class weights n_train / (num_classes * count_c), float32
    [num_classes], from dataset_meta_data['train_class_counts']; 0 for a class
    with no training example."""
    counts = self.dataset_meta_data.get('train_class_counts')
    if counts is None:
      raise ValueError(
          'config.class_weighted_loss needs the training class '
          "counts in the dataset metadata ('train_class_counts')."
      )
    counts = np.asarray(counts, np.float64)
    weights = np.where(
        counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0
    )
    return weights.astype(np.float32)

  def loss_function(
      self, logits: jax.Array, batch: dict, model_params: Any = None
  ) -> jax.Array:
    """Mean softmax cross-entropy weighted by batch['batch_mask'] (label
    smoothing from config.label_smoothing), plus
    0.5 * config.l2_decay_factor * ||model_params||^2 when that is set.

    With config.class_weighted_loss, each example's cross-entropy is also
    multiplied by its class weight sum_c label_c * w_c (soft labels mix the
    weights), w_c = n_train / (num_classes * count_c) from the metadata's
    'train_class_counts' (0 for a class absent from training). The sum is
    still divided by the sum of the batch_mask weights, as Keras' class_weight
    does, so the loss keeps its scale: on the training distribution the mean
    class weight is 1.
    """
    one_hot = model_utils.as_one_hot(batch['label'], logits)
    weights = per_example_weights(batch, logits)
    ce = model_utils.softmax_cross_entropy(
        logits, one_hot, self.config.label_smoothing
    )
    example_weights = weights
    if self.config.class_weighted_loss:
      example_weights = weights * (
          one_hot.astype(jnp.float32) @ jnp.asarray(self.class_weights())
      )
    loss = jnp.sum(
        jnp.where(weights > 0, ce, 0.0) * example_weights
    ) / jnp.maximum(jnp.sum(weights), 1e-8)
    l2_decay_factor = self.config.l2_decay_factor
    if l2_decay_factor:
      if model_params is None:
        raise ValueError(
            'config.l2_decay_factor is set, so loss_function '
            'needs model_params.'
        )
      loss = loss + 0.5 * l2_decay_factor * model_utils.l2_norm_squared(
          model_params
      )
    return loss

  def get_metrics_fn(self, split: Optional[str] = None):
    """fn(logits, batch) -> {name: (sum, count)}, both psum'd over the pmap
    axis AXIS_NAME and weighted by batch['batch_mask']: 'accuracy',
    'top_5_accuracy' (more than 5 classes) and 'loss' (unsmoothed CE). The
    same metrics serve every split."""
    del split
    with_top5 = self.dataset_meta_data.get('num_classes', 0) > 5

    def metrics_fn(logits: jax.Array, batch: dict) -> dict:
      one_hot = model_utils.as_one_hot(batch['label'], logits)
      weights = per_example_weights(batch, logits)
      values = {'accuracy': model_utils.topk_correct(logits, one_hot, 1)}
      if with_top5:
        values['top_5_accuracy'] = model_utils.topk_correct(logits, one_hot, 5)
      values['loss'] = model_utils.softmax_cross_entropy(logits, one_hot)
      count = jax.lax.psum(jnp.sum(weights), AXIS_NAME)
      return {
          name: (
              jax.lax.psum(
                  jnp.sum(jnp.where(weights > 0, v, 0.0) * weights), AXIS_NAME
              ),
              count,
          )
          for name, v in values.items()
      }

    return metrics_fn


def per_example_weights(batch: dict, outputs: jax.Array) -> jax.Array:
  """Per-example weights: batch['batch_mask'], or ones for the examples of `outputs` [B, ...]
  without one."""
  mask = batch.get('batch_mask')
  if mask is None:
    return jnp.ones(outputs.shape[:1], jnp.float32)
  return jnp.asarray(mask, jnp.float32)


# config.model_name -> its model class.
MODELS = {'vivit_classification': ViViTClassificationModel}


def get_model_cls(model_name: str):
  """The model class registered under config.model_name."""
  if model_name not in MODELS:
    raise ValueError(
        f'Unknown model_name {model_name!r}; use one of {list(MODELS)}.'
    )
  return MODELS[model_name]
