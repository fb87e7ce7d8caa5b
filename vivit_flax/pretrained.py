"""Initialisation of a ViViT from a 2D image ViT checkpoint, or from a run of this project such as
masked pretraining (Scenic's `config.init_from`).

  config.init_from.checkpoint_path               ViT checkpoint (see `load_vit_params`), or the
                                                 workdir of a run of this project
  config.init_from.checkpoint_format             'big_vision' (.npz, default), 'scenic', or
                                                 'vivit' (a workdir: see `init_from_vivit_run`)
  config.init_from.restore_positional_embedding  default True
  config.init_from.restore_input_embedding       default True
  config.init_from.positional_embed_size_change  'tile', 'resize' or 'resize_tile' (default)
  config.init_from.model_config.model.classifier the ViT's classifier; default 'token' when the
                                                 checkpoint has a class token 'cls', else 'gap'

What is restored, as Scenic's ViViT does it: the patch embedding, inflated to tubelets with
config.model.temporal_encoding_config.kernel_init_method (an RGB kernel is summed over its colour
channels for one-channel volumes); the class token when both models use one; every encoder block
and the final encoder LayerNorm (Model 2: into the spatial encoder, the temporal encoder stays
fresh; Model 3: the ViT's attention into both the space and the time attention of each block,
its first LayerNorm into LayerNorm_space, LayerNorm_time staying fresh); the position embedding,
brought to the model's token grid; pre_logits when both models have it. The classifier head is
never restored. A parameter whose shape does not fit raises PretrainedMismatchError naming it.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import core, serialization, traverse_util
from flax.training import checkpoints as flax_checkpoints

from vivit_flax import checkpoints

POSEMB_SIZE_CHANGES = ('tile', 'resize', 'resize_tile')
# Model 3 blocks hold two attention sub-layers; a ViT block's parts map onto them like this
# (target name, ViT name). LayerNorm_time has no ViT counterpart and keeps its initialisation.
_FACTORIZED_BLOCK_SOURCES = (
    ('LayerNorm_space', 'LayerNorm_0'),
    ('MultiHeadDotProductAttention_space', 'MultiHeadDotProductAttention_0'),
    ('MultiHeadDotProductAttention_time', 'MultiHeadDotProductAttention_0'),
    ('LayerNorm_mlp', 'LayerNorm_1'),
    ('MlpBlock', 'MlpBlock_0'),
)
_BLOCK_PARTS = (
    'LayerNorm_0',
    'MultiHeadDotProductAttention_0',
    'LayerNorm_1',
    'MlpBlock_0',
)


class PretrainedMismatchError(ValueError):
  """The ViT checkpoint does not fit the ViViT that the config builds."""


def _params_of(tree: dict, path: str) -> dict:
  """The parameter tree inside a restored Scenic/Flax checkpoint (a train state or bare params)."""
  if 'Transformer' in tree:
    return tree
  if 'params' in tree:
    return tree['params']
  if 'target' in tree.get('optimizer', {}):
    return tree['optimizer']['target']
  raise ValueError(
      f'{path} holds no ViT parameters: expected a Transformer entry, or params / '
      f'optimizer.target of a train state; found {sorted(tree)}.'
  )


def load_vit_params(
    path: str, checkpoint_format: str = 'big_vision'
) -> dict[str, Any]:
  """The parameters of a 2D ViT checkpoint, as a nested dict of numpy arrays in Scenic's layout.

  Formats: 'big_vision', an `.npz` whose keys are '/'-joined parameter paths as written by
  big_vision and google-research/vision_transformer (e.g. 'embedding/kernel', 'cls',
  'Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel'); 'scenic', a Flax
  msgpack checkpoint file or an Orbax checkpoint directory holding a train state (params or
  optimizer.target) or bare parameters. Pre-Linen block names (MultiHeadDotProductAttention_1,
  LayerNorm_2, MlpBlock_3) are renumbered, and a position embedding stored at the top level
  ('pos_embedding', big_vision) or in the encoder ('Transformer/pos_embedding') moves to
  'Transformer/posembed_input/pos_embedding'.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'ViT checkpoint {path} does not exist '
        '(config.init_from.checkpoint_path).'
    )
  if checkpoint_format == 'big_vision':
    with np.load(path, allow_pickle=False) as npz:
      tree = traverse_util.unflatten_dict(
          {tuple(k.split('/')): npz[k] for k in npz.files}
      )
  elif checkpoint_format == 'scenic':
    if os.path.isdir(path):
      with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(os.path.abspath(path))
    else:
      with open(path, 'rb') as f:
        tree = serialization.msgpack_restore(f.read())
    tree = _params_of(tree, path)
  else:
    raise ValueError(
        f'Unknown config.init_from.checkpoint_format {checkpoint_format!r}: use '
        "'big_vision' (.npz), 'scenic' (Flax/Orbax checkpoint) or 'vivit' (a run's workdir)."
    )
  params = flax_checkpoints.convert_pre_linen(
      jax.tree_util.tree_map(np.asarray, dict(tree))
  )
  encoder = params.get('Transformer')
  if not isinstance(encoder, dict) or 'embedding' not in params:
    raise ValueError(
        f'{path} is not a ViT checkpoint: it lacks embedding/ or Transformer/ '
        f'(found {sorted(params)}).'
    )
  posemb = params.pop('pos_embedding', None)
  if posemb is None:
    posemb = encoder.pop('pos_embedding', None)
  if posemb is not None:
    encoder['posembed_input'] = {'pos_embedding': posemb}
  return params


def _tree_at(tree: dict, path: str):
  node = tree
  for part in path.split('/'):
    node = node[part]
  return node


def _has(tree: dict, path: str) -> bool:
  try:
    _tree_at(tree, path)
  except (KeyError, TypeError):
    return False
  return True


def _put(params: dict, path: str, value, source: str) -> None:
  """Sets params[path] to `value`, which must have that parameter's shape."""
  parent, _, name = path.rpartition('/')
  node = _tree_at(params, parent) if parent else params
  old = node[name]
  if tuple(np.shape(value)) != tuple(old.shape):
    raise PretrainedMismatchError(
        f'ViT parameter {source} has shape {tuple(np.shape(value))} but the ViViT parameter '
        f'{path} has shape {tuple(old.shape)}. Make the config match the checkpoint (config.model.'
        'hidden_size, num_heads, mlp_dim, patches.size) or turn this part off in '
        'config.init_from.'
    )
  node[name] = jnp.asarray(value, old.dtype)


def _copy_subtree(params: dict, path: str, vit: dict, source: str) -> None:
  """Copies every leaf of vit[source] into params[path]; both must hold the same leaves."""
  target = _tree_at(params, path)
  flat_source = traverse_util.flatten_dict(_tree_at(vit, source), sep='/')
  differ = sorted(
      set(flat_source) ^ set(traverse_util.flatten_dict(target, sep='/'))
  )
  if differ:
    raise PretrainedMismatchError(
        f'ViT parameters {source} and ViViT parameters {path} differ in their entries (e.g. '
        f'{differ[0]}): the checkpoint was written by a different architecture.'
    )
  for name, value in flat_source.items():
    _put(params, f'{path}/{name}', value, f'{source}/{name}')


def _num_blocks(encoder: dict) -> int:
  return sum(name.startswith('encoderblock_') for name in encoder)


def inflate_kernel(
    kernel: np.ndarray, num_frames: int, method: str | None
) -> np.ndarray:
  """A 2D patch kernel [h, w, c, d] as a tubelet kernel [t, h, w, c, d].

  'central_frame_initializer' puts it at the central time index t // 2 (zeros elsewhere);
  'average_frame_initializer' repeats it over time divided by t. On a clip whose frames are all
  equal, both give the 2D patch embedding of a frame.
  """
  if method == 'central_frame_initializer':
    inflated = np.zeros((num_frames,) + kernel.shape, kernel.dtype)
    inflated[num_frames // 2] = kernel
    return inflated
  if method == 'average_frame_initializer':
    return np.repeat(kernel[None], num_frames, axis=0) / num_frames
  raise ValueError(
      f'Inflating the ViT patch embedding to {num_frames}-frame tubelets needs config.model.'
      "temporal_encoding_config.kernel_init_method='central_frame_initializer' or "
      f"'average_frame_initializer' (got {method!r}); or set "
      'config.init_from.restore_input_embedding=False.'
  )


def _fit_channels(kernel: np.ndarray, channels: int) -> np.ndarray:
  """A [..., c, d] kernel for `channels` input channels: an RGB kernel is summed for one channel,
  which embeds a grey image as the ViT embeds the same image repeated in R, G and B.
  """
  if kernel.shape[-2] == channels or channels != 1:
    return kernel
  return kernel.sum(axis=-2, keepdims=True)


def posemb_grid(
    grid: np.ndarray, token_grid: Sequence[int], method: str
) -> np.ndarray:
  """A ViT position-embedding grid [h0, w0, d] as rows [t * h * w, d] for a (t, h, w) token grid.

  'tile' repeats the grid for every time index (needs h, w == h0, w0); 'resize' resizes it
  bilinearly to (h, w) (needs t == 1); 'resize_tile' resizes, then tiles. Rows are time-major,
  as the model flattens its tokens.
  """
  t, h, w = token_grid
  if method not in POSEMB_SIZE_CHANGES:
    raise ValueError(
        f'Unknown config.init_from.positional_embed_size_change {method!r}: use one '
        f'of {list(POSEMB_SIZE_CHANGES)}.'
    )
  if method == 'tile' and grid.shape[:2] != (h, w):
    raise PretrainedMismatchError(
        f'The ViT position embedding covers a {grid.shape[0]}x{grid.shape[1]} patch grid, the '
        f"ViViT frames a {h}x{w} grid: 'tile' needs them equal. Set config.init_from."
        "positional_embed_size_change='resize_tile'."
    )
  if method == 'resize' and t != 1:
    raise PretrainedMismatchError(
        f"positional_embed_size_change='resize' fills one frame of tokens, but the ViViT has {t} "
        "time positions: use 'resize_tile' (or 'tile')."
    )
  if grid.shape[:2] != (h, w):
    grid = np.asarray(
        jax.image.resize(jnp.asarray(grid), (h, w, grid.shape[-1]), 'bilinear')
    )
  return np.tile(grid.reshape(1, h * w, -1), (t, 1, 1)).reshape(t * h * w, -1)


def _vit_posemb(
    vit: dict, has_token: bool, path: str
) -> tuple[np.ndarray | None, np.ndarray]:
  """The ViT's class-token position (None without a class token) and its square grid [g, g, d]."""
  posemb = _tree_at(vit, 'Transformer/posembed_input/pos_embedding')[0]
  n, d = posemb.shape
  if has_token and math.isqrt(n - 1) ** 2 == n - 1:
    cls_row, rows = posemb[:1], posemb[1:]
  elif (
      has_token and math.isqrt(n) ** 2 == n
  ):  # big_vision adds no position to the class token.
    cls_row, rows = np.zeros((1, d), posemb.dtype), posemb
  elif not has_token and math.isqrt(n) ** 2 == n:
    cls_row, rows = None, posemb
  else:
    raise PretrainedMismatchError(
        f'The position embedding of {path} has {n} rows, not a square patch grid'
        f'{" plus a class token" if has_token else ""}; check config.init_from.model_config.'
        'model.classifier.'
    )
  g = math.isqrt(len(rows))
  return cls_row, rows.reshape(g, g, d)


def _restore_embedding(
    params: dict, vit: dict, config: ml_collections.ConfigDict
) -> None:
  """The patch embedding: channels fitted, inflated to the tubelet length for '3d_conv'."""
  target = params['embedding']['kernel'].shape
  kernel = _fit_channels(vit['embedding']['kernel'], target[-2])
  if len(target) == 5 and kernel.ndim == 4:
    if kernel.shape[:2] != target[1:3]:
      raise PretrainedMismatchError(
          f'ViT parameter embedding/kernel has {kernel.shape[0]}x{kernel.shape[1]} patches but '
          f'the ViViT has {target[1]}x{target[2]}: set config.model.patches.size to '
          f'({kernel.shape[0]}, {kernel.shape[1]}, t), or config.init_from.'
          'restore_input_embedding=False.'
      )
    encoding = config.model.get('temporal_encoding_config') or {}
    kernel = inflate_kernel(
        kernel, target[0], encoding.get('kernel_init_method')
    )
  _put(params, 'embedding/kernel', kernel, 'embedding/kernel')
  _put(params, 'embedding/bias', vit['embedding']['bias'], 'embedding/bias')


def _restore_posemb(
    params: dict,
    path: str,
    vit: dict,
    vit_token: bool,
    grid: Sequence[int],
    method: str,
    where: str,
) -> None:
  """The position embedding at `path`, from the ViT's, brought to the (t, h, w) token grid."""
  if not _has(vit, 'Transformer/posembed_input/pos_embedding'):
    raise PretrainedMismatchError(
        f'{where} has no position embedding; set config.init_from.'
        'restore_positional_embedding=False.'
    )
  cls_row, vit_grid = _vit_posemb(vit, vit_token, where)
  rows = posemb_grid(vit_grid, grid, method)
  fresh = np.asarray(_tree_at(params, path)[0])
  if len(fresh) > len(
      rows
  ):  # A class token: the ViT's position for it, else the fresh one.
    rows = np.concatenate([fresh[:1] if cls_row is None else cls_row, rows])
  _put(params, path, rows[None], 'Transformer/posembed_input/pos_embedding')


def _restore_encoder(
    params: dict, encoder: str, vit: dict, attention: str, where: str
) -> None:
  """Every encoder block (Model 3: the ViT block's parts mapped onto both attentions) and the
  final LayerNorm."""
  layers, vit_layers = _num_blocks(params[encoder]), _num_blocks(
      vit['Transformer']
  )
  if vit_layers != layers:
    raise PretrainedMismatchError(
        f'{where} has {vit_layers} encoder blocks (Transformer/encoderblock_*) but the ViViT '
        f'{encoder} has {layers}: set config.model.'
        f'{"spatial_transformer." if encoder == "SpatialTransformer" else ""}'
        f'num_layers={vit_layers}.'
    )
  sources = (
      _FACTORIZED_BLOCK_SOURCES
      if attention == 'factorized_self_attention_block'
      else tuple(zip(_BLOCK_PARTS, _BLOCK_PARTS))
  )
  for i in range(layers):
    for part, vit_part in sources:
      _copy_subtree(
          params,
          f'{encoder}/encoderblock_{i}/{part}',
          vit,
          f'Transformer/encoderblock_{i}/{vit_part}',
      )
  _copy_subtree(
      params, f'{encoder}/encoder_norm', vit, 'Transformer/encoder_norm'
  )


def init_from_vit(
    vivit_params: dict,
    vit_params: dict,
    config: ml_collections.ConfigDict,
    token_grid: Sequence[int],
) -> dict:
  """New ViViT parameters: `vivit_params` with the parts `vit_params` can supply replaced.

  Args:
    vivit_params: freshly initialised ViViT parameters.
    vit_params: 2D ViT parameters from `load_vit_params`.
    config: the experiment config (config.model and config.init_from).
    token_grid: the ViViT's tokens along (time, height, width) (`ViViT.token_grid`).

  Raises:
    PretrainedMismatchError: naming the first parameter that does not fit.
  """
  init_from = config.get('init_from') or ml_collections.ConfigDict()
  where = init_from.get('checkpoint_path') or 'the ViT checkpoint'
  params = jax.tree_util.tree_map(lambda x: x, core.unfreeze(vivit_params))
  attention = (config.model.get('attention_config') or {}).get(
      'type', 'spacetime'
  )
  encoder = (
      'SpatialTransformer'
      if attention == 'factorized_encoder'
      else 'Transformer'
  )
  vit_classifier = (
      (init_from.get('model_config') or {}).get('model') or {}
  ).get('classifier', 'token' if 'cls' in vit_params else 'gap')
  vit_token = vit_classifier == 'token'
  if vit_token and 'cls' not in vit_params:
    raise PretrainedMismatchError(
        f"{where} has no class token 'cls', but config.init_from."
        "model_config.model.classifier is 'token'."
    )

  if init_from.get('restore_input_embedding', True):
    _restore_embedding(params, vit_params, config)
  cls_name = 'cls' if encoder == 'Transformer' else f'cls_{encoder}'
  if vit_token and cls_name in params:
    _put(params, cls_name, vit_params['cls'], 'cls')
  posemb_path = f'{encoder}/posembed_input/pos_embedding'
  if init_from.get('restore_positional_embedding', True) and _has(
      params, posemb_path
  ):
    t, h, w = token_grid  # Model 2's spatial encoder sees one frame at a time.
    _restore_posemb(
        params,
        posemb_path,
        vit_params,
        vit_token,
        (1, h, w) if encoder == 'SpatialTransformer' else (t, h, w),
        init_from.get('positional_embed_size_change', 'resize_tile'),
        where,
    )
  _restore_encoder(params, encoder, vit_params, attention, where)
  if 'pre_logits' in params and 'pre_logits' in vit_params:
    _copy_subtree(params, 'pre_logits', vit_params, 'pre_logits')
  logging.info('Initialised the ViViT (%s) from %s.', attention, where)
  return params


# What a run of this project passes on to fine-tuning: the tokeniser and the encoder. Heads and
# the decoder of masked pretraining stay behind.
TRANSFERRED_FROM_RUNS = ('stem', 'embedding', 'Transformer')


def init_from_vivit_run(params: dict, workdir: str) -> dict:
  """New parameters: `params` with the tokeniser and encoder (TRANSFERRED_FROM_RUNS) of the
  newest checkpoint in `workdir` (its moving average where the run kept one), such as a masked
  pretraining run of the same ViViT. The classifier head stays as initialised.

  Raises:
    PretrainedMismatchError: naming the first part or parameter that does not fit.
  """
  source, _ = checkpoints.restore_params(workdir)
  params = jax.tree_util.tree_map(lambda x: x, core.unfreeze(params))
  for name in TRANSFERRED_FROM_RUNS:
    if (name in params) != (name in source):
      raise PretrainedMismatchError(
          f'The run in {workdir} {"lacks" if name in params else "has"} {name!r}, which this'
          f' ViViT {"has" if name in params else "lacks"}: make config.model (stem, patches,'
          ' attention_config) match the config.json of that run.'
      )
    if name in params:
      _copy_subtree(params, name, source, name)
  logging.info(
      'Initialised the tokeniser and encoder from the run in %s.', workdir
  )
  return params


def apply_init_from(model, params: dict) -> dict:
  """`params` initialised from config.init_from.checkpoint_path, or unchanged when that is unset.

  Args:
    model: the ViViTClassificationModel (its config, dataset_meta_data['input_shape'] and
      flax_model fix the token grid).
    params: freshly initialised parameters of model.flax_model.
  """
  init_from = model.config.get('init_from')
  if not init_from or not init_from.get('checkpoint_path'):
    return params
  if init_from.get('checkpoint_format') == 'vivit':
    return init_from_vivit_run(
        params, os.path.expanduser(init_from.checkpoint_path)
    )
  vit_params = load_vit_params(
      os.path.expanduser(init_from.checkpoint_path),
      init_from.get('checkpoint_format', 'big_vision'),
  )
  token_grid = model.flax_model.token_grid(
      tuple(model.dataset_meta_data['input_shape'])[1:4]
  )
  return init_from_vit(params, vit_params, model.config, token_grid)
