"""Masked-volume pretraining of a ViViT encoder: VideoMAE (Tong et al., NeurIPS 2022) for 3D tubelets,
laid out as Scenic's projects/av_mae (a pretraining config, then a fine-tuning config whose
`config.init_from.checkpoint_path` names the pretraining run).

A config selects it with `config.trainer_name = 'vivit_mae_pretrainer'`; the same Trainer loop, the
same checkpoints, resume and writers run it, with the train step of `train_utils` over the loss of
`ViViTMaskedAutoencoderModel` and the evaluation of this module (reconstruction loss on a split).

  config.model                                   the ViViT to pretrain (Model 1, 3 or 4), as for
                                                 classification; its tokeniser and encoder are what
                                                 fine-tuning loads (pretrained.py, format 'vivit')
  config.masked_feature_loss.token_mask_probability   share of tokens masked (VideoMAE: 0.9)
  config.masked_feature_loss.mask_type           'random' (any tokens) or 'tube' (the same (h, w)
                                                 tokens at every time index, VideoMAE's masking)
  config.masked_feature_loss.normalise_targets   reconstruct each tubelet's voxels normalised to
                                                 zero mean and unit variance (VideoMAE's default)
  config.model.decoder_config                    hidden_size, num_heads, mlp_dim, num_layers and
                                                 positional_embedding of the light decoder
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from vivit_flax import default_config, model, model_utils, train_utils
from vivit_flax.config_checks import check_choice, check_positive

TRAINER_NAME = 'vivit_mae_pretrainer'
MASK_TYPES = ('random', 'tube')
# Models whose token mixing works on a subset of the tokens: any subset for joint attention, a
# product of the time axis and a set of spatial positions (tube masking) for the factorised ones.
MASK_TYPES_OF_ATTENTION = {
    'spacetime': MASK_TYPES,
    'factorized_self_attention_block': ('tube',),
    'factorized_dot_product_attention': ('tube',),
}


def check_config(config: ml_collections.ConfigDict, input_shape) -> None:
  """Raises ValueError, saying what to change, when masked pretraining cannot run `config` on
  inputs of `input_shape` (-1, T, H, W, C)."""
  config = default_config.with_defaults(config)
  loss, m = config.masked_feature_loss, config.model
  attention = m.attention_config.type
  if attention not in MASK_TYPES_OF_ATTENTION:
    raise ValueError(
        f'Masked pretraining does not fit config.model.attention_config.type={attention!r}:'
        ' Model 2 pools each frame before its temporal encoder, so no token-level'
        ' representation is left to reconstruct masked tubelets from. Pretrain Model 1'
        " ('spacetime'), or Models 3/4 with tube masking."
    )
  check_choice(
      'config.masked_feature_loss.mask_type', loss.mask_type, MASK_TYPES
  )
  if loss.mask_type not in MASK_TYPES_OF_ATTENTION[attention]:
    raise ValueError(
        f'config.masked_feature_loss.mask_type={loss.mask_type!r} does not fit {attention!r}:'
        ' its attention runs over time and over space separately, which needs the same'
        " spatial tokens visible at every time index. Use mask_type='tube'."
    )
  ratio = loss.token_mask_probability
  if not 0.0 < ratio < 1.0:
    raise ValueError(
        f'config.masked_feature_loss.token_mask_probability={ratio} must be in (0, 1).'
    )
  if m.temporal_encoding_config.method != '3d_conv':
    raise ValueError(
        'Masked pretraining reconstructs the voxels of tubelets: set config.model.'
        "temporal_encoding_config.method='3d_conv' (uniform frame sampling drops frames"
        ' that no token covers).'
    )
  if m.stem.features and m.stem.padding != 'SAME':
    raise ValueError(
        "Masked pretraining needs config.model.stem.padding='SAME': with 'VALID' the"
        ' voxels a token covers are not a tile of the volume, so masking a token cannot'
        ' hide exactly its voxels.'
    )
  decoder = m.decoder_config
  for key in ('hidden_size', 'num_heads', 'mlp_dim', 'num_layers'):
    check_positive(f'config.model.decoder_config.{key}', decoder[key])
  check_choice(
      'config.model.decoder_config.positional_embedding',
      decoder.positional_embedding,
      model.POSITIONAL_EMBEDDINGS,
  )
  if decoder.hidden_size % decoder.num_heads:
    raise ValueError(
        f'config.model.decoder_config.hidden_size={decoder.hidden_size} must be a multiple'
        f' of num_heads={decoder.num_heads}.'
    )
  if decoder.positional_embedding == 'sinusoidal_3d':
    model_utils.check_sinusoidal_3d_width(
        'config.model.decoder_config.hidden_size', decoder.hidden_size
    )
  grid = ViViTMaskedAutoencoderModel(
      config, {'num_classes': 1, 'input_shape': tuple(input_shape)}
  ).token_grid()
  spatial = grid[1] * grid[2]
  units = spatial if loss.mask_type == 'tube' else math.prod(grid)
  if not 1 <= num_visible(units, ratio) < units:
    raise ValueError(
        f'token_mask_probability={ratio} leaves {num_visible(units, ratio)} of {units}'
        f' {"spatial positions" if loss.mask_type == "tube" else "tokens"} visible:'
        ' at least one must be visible and one masked.'
    )


def pretraining_stage(
    config: ml_collections.ConfigDict, workdir: str
) -> tuple[ml_collections.ConfigDict, str] | None:
  """The masked pretraining that a fine-tuning `config` asks to run first, and its workdir.

  `config.init_from.masked_pretraining` asks for it: its keys override `config` (e.g.
  num_training_epochs, lr_configs, masked_feature_loss, model.decoder_config) in a pretraining of
  the same ViViT on the same data and seed, trained in `<workdir>/masked_pretraining`;
  fine-tuning then starts from its tokeniser and encoder (checkpoint_format 'vivit'). None when
  `config` asks for no such stage, or names the run to start from in
  `config.init_from.checkpoint_path` (which then wins).
  """
  init_from = config.get('init_from')
  if not init_from or init_from.get('masked_pretraining') is None:
    return None
  if init_from.get('checkpoint_path'):
    logging.info(
        'config.init_from.checkpoint_path is set: fine-tuning from %s, without the'
        ' masked pretraining stage of config.init_from.masked_pretraining.',
        init_from.checkpoint_path,
    )
    return None
  pretraining = ml_collections.ConfigDict(config.to_dict())
  del pretraining['init_from']
  pretraining.update(init_from.masked_pretraining.to_dict())
  pretraining.trainer_name = TRAINER_NAME
  pretraining.best_checkpoint_metric = None
  pretraining.experiment_name = (
      f'{config.get("experiment_name", "")}_masked_pretraining'
  )
  return pretraining, os.path.join(workdir, 'masked_pretraining')


def num_visible(num_units: int, mask_ratio: float) -> int:
  """Tokens (or tube positions) left visible out of `num_units` at `mask_ratio`."""
  return int(round(num_units * (1.0 - mask_ratio)))


def sample_token_masks(
    rng: jax.Array,
    batch_size: int,
    grid: tuple[int, int, int],
    mask_ratio: float,
    mask_type: str,
) -> tuple[jax.Array, jax.Array]:
  """Indices of the visible and of the masked tokens of each example, [B, n_visible] and
  [B, n_masked], each sorted (time-major, as the token sequence), drawn uniformly without
  replacement. 'tube' masks the same spatial positions at every time index, so the visible
  tokens of each time index are the same n_visible / t positions."""
  t, h, w = grid
  units = h * w if mask_type == 'tube' else t * h * w
  keep = num_visible(units, mask_ratio)
  order = jnp.argsort(jax.random.uniform(rng, (batch_size, units)), axis=1)
  visible = jnp.sort(order[:, :keep], axis=1)
  masked = jnp.sort(order[:, keep:], axis=1)
  if mask_type == 'tube':
    offsets = (jnp.arange(t) * units)[None, :, None]
    visible = (offsets + visible[:, None]).reshape(batch_size, -1)
    masked = (offsets + masked[:, None]).reshape(batch_size, -1)
  return visible.astype(jnp.int32), masked.astype(jnp.int32)


def tubelet_voxels(
    x: jax.Array, grid: tuple[int, ...], footprint: tuple[int, ...]
) -> jax.Array:
  """The voxels each token covers: x [B, T, H, W, C] -> [B, t*h*w, ft*fh*fw*C] (time-major
  tokens; voxels past the grid, which drop_remainder leaves to no token, are cut off).
  """
  b, c = x.shape[0], x.shape[-1]
  (t, h, w), (ft, fh, fw) = grid, footprint
  x = x[:, : t * ft, : h * fh, : w * fw]
  x = x.reshape(b, t, ft, h, fh, w, fw, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, t * h * w, ft * fh * fw * c)


def voxel_keep_mask(
    masked: jax.Array,
    grid: tuple[int, ...],
    footprint: tuple[int, ...],
    input_thw: tuple[int, ...],
) -> jax.Array:
  """[B, T, H, W, 1]: 0 on the voxels of the `masked` tokens, 1 elsewhere."""
  b = masked.shape[0]
  tokens = jnp.ones((b, math.prod(grid)), jnp.float32)
  tokens = tokens.at[jnp.arange(b)[:, None], masked].set(0.0)
  voxels = tokens.reshape((b,) + tuple(grid))
  for axis, repeat in enumerate(footprint):
    voxels = jnp.repeat(voxels, repeat, axis=axis + 1)
  pad = [(0, 0)] + [
      (0, n - g * f) for n, g, f in zip(input_thw, grid, footprint)
  ]
  return jnp.pad(voxels, pad, constant_values=1.0)[..., None]


def normalise(targets: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Each row of `targets` [..., P] at zero mean and unit variance (VideoMAE's normalised pixels)."""
  mean = targets.mean(axis=-1, keepdims=True)
  var = targets.var(axis=-1, keepdims=True)
  return (targets - mean) / jnp.sqrt(var + eps)


class MaskedAutoencoder(model.ViViT):
  """A ViViT encoder (Model 1, 3 or 4) with VideoMAE's masking and a light decoder.

  The input [B, T, H, W, C] is cut into the tokens of the ViViT's tokeniser; a share
  `mask_ratio` of them is masked. The masked tokens' voxels are zeroed before the tokeniser (so
  no masked voxel reaches a visible token, not even through the convolutional stem), and the
  encoder runs on the visible tokens alone, each with the position embedding of its place in the
  grid. The decoder embeds them to `decoder_hidden_size`, puts a learned mask token at every
  masked place, adds `decoder_positional_embedding` and runs `decoder` blocks of joint attention;
  a linear layer predicts the voxels of every token. A learned embedding by default: with MAE's
  fixed sin-cos one ('sinusoidal_3d') on a 4x4x4 grid, the loss stayed near the zero predictor's
  for a thousand steps (benchmarks/RESULTS.md, "Masked-volume pretraining").

  Returns {'predictions', 'targets'} [B, n_masked, P] for the masked tokens (P = the voxels a
  token covers, its tubelet times the stem's strides, times channels; targets normalised per
  token when `normalise_targets`) and 'masked_tokens' [B, n_masked], their places in the
  time-major token grid. Parameter names of the tokeniser and encoder are the ViViT's
  ('stem', 'embedding', 'Transformer'), so fine-tuning loads them unchanged. Masks are drawn from
  the 'masking' RNG in training and from a fixed key in evaluation (the same masks every time).
  """

  mask_ratio: float = 0.9
  mask_type: str = 'random'
  decoder: model.TransformerSize = model.TransformerSize(4, 256, 2)
  decoder_hidden_size: int = 64
  decoder_positional_embedding: str = 'learned_1d'
  normalise_targets: bool = True

  def footprint(self) -> tuple[int, int, int]:
    """Voxels a token covers along (T, H, W): its tubelet, scaled by the stem's strides."""
    stride = math.prod(self.stem_strides)
    ph, pw, pt = self.patch_size
    return (pt * stride, ph * stride, pw * stride)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    x = jnp.asarray(x, self.dtype)
    b = x.shape[0]
    grid = self.token_grid(x.shape[1:4])
    rng = self.make_rng('masking') if train else jax.random.PRNGKey(0)
    visible, masked = sample_token_masks(
        rng, b, grid, self.mask_ratio, self.mask_type
    )
    footprint = self.footprint()
    keep = voxel_keep_mask(masked, grid, footprint, x.shape[1:4])
    tokens = self._embed(x * keep.astype(x.dtype))
    tokens = tokens.reshape(b, -1, tokens.shape[-1])
    tokens = jnp.take_along_axis(tokens, visible[..., None], axis=1)
    encoded = model.Encoder(
        grid=grid,
        size=self.transformer,
        attention=self.token_attention(),
        positional_embedding=self.positional_embedding,
        stochastic_droplayer_rate=self.stochastic_droplayer_rate,
        options=self.layer_options(),
        name='Transformer',
    )(tokens, train=train, token_indices=visible)
    predictions = self._decode(encoded, visible, grid, train)
    targets = tubelet_voxels(x.astype(jnp.float32), grid, footprint)
    if self.normalise_targets:
      targets = normalise(targets)
    return {
        'predictions': jnp.take_along_axis(
            predictions, masked[..., None], axis=1
        ),
        'targets': jnp.take_along_axis(targets, masked[..., None], axis=1),
        'masked_tokens': masked,
    }

  def _decode(self, encoded, visible, grid, train) -> jax.Array:
    """Voxel predictions [B, N, P] of every token from the encoded visible ones."""
    b, n = encoded.shape[0], math.prod(grid)
    width = self.decoder_hidden_size
    y = nn.Dense(width, dtype=self.dtype, name='decoder_embedding')(encoded)
    mask_token = self.param(
        'mask_token', nn.initializers.normal(0.02), (1, 1, width), jnp.float32
    )
    tokens = jnp.broadcast_to(mask_token.astype(y.dtype), (b, n, width))
    tokens = tokens.at[jnp.arange(b)[:, None], visible].set(y)
    decoded = model.Encoder(
        grid=grid,
        size=self.decoder,
        positional_embedding=self.decoder_positional_embedding,
        options=model.LayerOptions(
            dtype=self.dtype, cpu_fast_layers=self.cpu_fast_layers
        ),
        name='Decoder',
    )(tokens, train=train)
    voxels = math.prod(self.footprint())
    return nn.Dense(voxels, dtype=jnp.float32, name='decoder_prediction')(
        decoded
    )


class ViViTMaskedAutoencoderModel(model.ViViTClassificationModel):
  """The Scenic-style model of masked pretraining: the ViViT of config.model as a
  MaskedAutoencoder, its reconstruction loss and metrics."""

  def build_flax_model(self) -> MaskedAutoencoder:
    vivit = super().build_flax_model()
    fields = {
        f.name: getattr(vivit, f.name)
        for f in dataclasses.fields(vivit)
        if f.init and f.name not in ('parent', 'name')
    }
    loss, decoder = (
        self.config.masked_feature_loss,
        self.config.model.decoder_config,
    )
    return MaskedAutoencoder(
        **fields,
        mask_ratio=loss.token_mask_probability,
        mask_type=loss.mask_type,
        normalise_targets=loss.normalise_targets,
        decoder=model.TransformerSize(
            num_heads=decoder.num_heads,
            mlp_dim=decoder.mlp_dim,
            num_layers=decoder.num_layers,
        ),
        decoder_hidden_size=decoder.hidden_size,
        decoder_positional_embedding=decoder.positional_embedding,
    )

  def token_grid(self) -> tuple[int, int, int]:
    """The token grid of the dataset's volumes."""
    return self.flax_model.token_grid(
        tuple(self.dataset_meta_data['input_shape'])[1:4]
    )

  def loss_function(
      self, outputs: dict, batch: dict, model_params: Any = None
  ) -> jax.Array:
    """Mean squared error over the masked tokens' voxels, averaged over the examples weighted by
    batch['batch_mask'] (plus config.l2_decay_factor's term when set)."""
    error = _per_example_error(outputs)
    weights = model.per_example_weights(batch, error)
    loss = jnp.sum(error * weights) / jnp.maximum(jnp.sum(weights), 1e-8)
    if self.config.l2_decay_factor:
      loss += (
          0.5
          * self.config.l2_decay_factor
          * model_utils.l2_norm_squared(model_params)
      )
    return loss

  def get_metrics_fn(self, split: str | None = None):
    """fn(outputs, batch) -> {'loss': (sum, count)}, psum'd over AXIS_NAME, weighted by
    batch['batch_mask']."""
    del split

    def metrics_fn(outputs: dict, batch: dict) -> dict:
      error = _per_example_error(outputs)
      weights = model.per_example_weights(batch, error)
      return {
          'loss': (
              jax.lax.psum(jnp.sum(error * weights), model.AXIS_NAME),
              jax.lax.psum(jnp.sum(weights), model.AXIS_NAME),
          )
      }

    return metrics_fn


def _per_example_error(outputs: dict) -> jax.Array:
  """[B] mean squared error of each example's masked voxels."""
  error = jnp.square(
      outputs['predictions'].astype(jnp.float32) - outputs['targets']
  )
  return error.mean(axis=(1, 2))


def eval_step(state, batch, *, metrics_fn: Callable):
  """Summed reconstruction metrics of one evaluation batch (fixed masks)."""
  outputs = state.apply_fn(
      {'params': state.eval_params}, batch['inputs'], train=False
  )
  return metrics_fn(outputs, batch)


def pmapped_steps(mae_model, config, learning_rate_fn, donate=True):
  """The pmapped train step (train_utils.pmapped_train_step over the reconstruction loss) and
  eval step of masked pretraining, as `train_utils.pmapped_steps` builds them for
  classification."""
  p_train_step = train_utils.pmapped_train_step(
      mae_model, config, learning_rate_fn, donate
  )
  p_eval_step = jax.pmap(
      functools.partial(
          eval_step, metrics_fn=mae_model.get_metrics_fn('validation')
      ),
      axis_name=train_utils.AXIS_NAME,
  )
  return p_train_step, p_eval_step


def evaluate(
    p_eval_step: Callable, state, batches: Iterable[dict]
) -> dict[str, float]:
  """Reconstruction loss over a whole split, and its number of examples."""
  metrics_list = [p_eval_step(state, batch) for batch in batches]
  if not metrics_list:
    raise ValueError('The evaluation split is empty.')
  results = train_utils.summarize_metrics(metrics_list)
  counts = jax.device_get(
      [train_utils.unreplicate(m)['loss'][1] for m in metrics_list]
  )
  results['num_examples'] = int(round(sum(map(float, counts))))
  return results
