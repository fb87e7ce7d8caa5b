"""Training state, learning-rate schedule, optimizer and the per-device train/eval steps.

The steps are written for one device and are turned into data-parallel programs by
`jax.pmap(..., axis_name=AXIS_NAME)` in the trainer: gradients are averaged with
`lax.pmean` and metrics are summed with `lax.psum` over that axis, which spans every
device of every process.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Sequence

import flax
from flax import jax_utils
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state as flax_train_state

from vivit_flax import default_config, model
from vivit_flax.config_checks import (
    check_choice,
    check_fraction,
    check_non_negative,
    check_positive,
)

Batch = dict[str, jnp.ndarray]
Metrics = dict[str, tuple[jnp.ndarray, jnp.ndarray]]

AXIS_NAME = model.AXIS_NAME


class TrainState(flax_train_state.TrainState):
  """Flax train state plus the base RNG from which per-step, per-device keys are folded, and
  the exponential moving average of the parameters (None unless config.ema_decay is set).
  """

  rng: jnp.ndarray
  ema_params: Any = None

  @property
  def eval_params(self) -> Any:
    """The parameters to evaluate and serve: the moving average when kept, else the params."""
    return self.params if self.ema_params is None else self.ema_params


def total_train_steps(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> int:
  """`config.num_training_steps` when set, else epochs times steps per epoch."""
  config = default_config.with_defaults(config)
  check_positive('config.num_training_steps', config.num_training_steps)
  check_positive('config.num_training_epochs', config.num_training_epochs)
  if config.num_training_steps:
    return int(config.num_training_steps)
  if not config.num_training_epochs:
    raise ValueError(
        'Set config.num_training_steps or config.num_training_epochs.'
    )
  return int(config.num_training_epochs) * steps_per_epoch


def check_evaluation_options(flip_axes: Sequence[int], shift: int) -> None:
  """The test-time views (config.tta_flip_axes, config.tta_shift) must exist."""
  axes = tuple(flip_axes)
  if any(a not in (0, 1, 2) or isinstance(a, bool) for a in axes) or len(
      set(axes)
  ) < len(axes):
    raise ValueError(
        f'config.tta_flip_axes={axes!r} must be distinct volume axes among 0 '
        '(depth), 1 (height) and 2 (width).'
    )
  check_non_negative('config.tta_shift', shift)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError, saying what to change, for training settings of `config` that
  cannot work: the length of the run, the schedule, the optimizer, the parameter average
  and the test-time views."""
  config = default_config.with_defaults(config)
  create_optimizer(
      config, create_learning_rate_fn(config, total_train_steps(config, 1))
  )
  check_fraction('config.ema_decay', config.ema_decay)
  check_evaluation_options(config.tta_flip_axes, config.tta_shift)


def create_learning_rate_fn(
    config: ml_collections.ConfigDict, total_steps: int
) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """Scenic's compound schedule: the product of the factors named in `lr_configs.factors`.

  Factors: `constant` (base_learning_rate), `linear_warmup` (over warmup_steps),
  `cosine_decay` (one cosine cycle of steps_per_cycle after warm-up), `linear_decay`
  (to zero at steps_per_cycle), `rsqrt_decay` (1/sqrt(step) after warm-up).
  `steps_per_cycle` defaults to the total number of training steps.
  """
  lr_configs = default_config.with_defaults(config).lr_configs
  if lr_configs.learning_rate_schedule != 'compound':
    raise ValueError(
        f'lr_configs.learning_rate_schedule={lr_configs.learning_rate_schedule!r} is not '
        "supported: use 'compound' and name the factors in lr_configs.factors."
    )
  factors = [name.strip() for name in lr_configs.factors.split('*')]
  check_positive(
      'config.lr_configs.base_learning_rate', lr_configs.base_learning_rate
  )
  check_non_negative('config.lr_configs.warmup_steps', lr_configs.warmup_steps)
  check_positive(
      'config.lr_configs.steps_per_cycle', lr_configs.steps_per_cycle
  )
  base_lr = float(lr_configs.base_learning_rate)
  warmup_steps = int(lr_configs.warmup_steps or 0)
  steps_per_cycle = int(lr_configs.steps_per_cycle or total_steps)
  known = (
      'constant',
      'linear_warmup',
      'cosine_decay',
      'linear_decay',
      'rsqrt_decay',
  )
  for name in factors:
    if name not in known:
      raise ValueError(
          f'Unknown learning-rate factor {name!r} in lr_configs.factors; '
          f'known factors: {", ".join(known)}.'
      )

  def learning_rate(step):
    step = jnp.asarray(step, jnp.float32)
    ratio = jnp.ones([], jnp.float32)
    for name in factors:
      if name == 'constant':
        ratio *= base_lr
      elif name == 'linear_warmup' and warmup_steps > 0:
        ratio *= jnp.minimum(1.0, step / warmup_steps)
      elif name == 'cosine_decay':
        progress = jnp.maximum(
            0.0, (step - warmup_steps) / max(steps_per_cycle - warmup_steps, 1)
        )
        ratio *= 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(progress, 1.0)))
      elif name == 'linear_decay':
        progress = jnp.maximum(
            0.0, (step - warmup_steps) / max(steps_per_cycle - warmup_steps, 1)
        )
        ratio *= jnp.maximum(0.0, 1.0 - progress)
      elif name == 'rsqrt_decay':
        ratio *= jax.lax.rsqrt(jnp.maximum(step, max(warmup_steps, 1)))
    return ratio

  return learning_rate


def _adam_moments(opt: ml_collections.ConfigDict) -> dict[str, float]:
  """Adam's moment decays and epsilon from config.optimizer_configs."""
  return dict(b1=opt.beta1, b2=opt.beta2, eps=opt.epsilon)


def _adam(learning_rate_fn: Callable, opt: ml_collections.ConfigDict):
  return optax.adam(learning_rate_fn, **_adam_moments(opt))


def _adamw(learning_rate_fn: Callable, opt: ml_collections.ConfigDict):
  return optax.adamw(
      learning_rate_fn,
      weight_decay=opt.weight_decay,
      **_adam_moments(opt),
  )


def _momentum(learning_rate_fn: Callable, opt: ml_collections.ConfigDict):
  return optax.sgd(
      learning_rate_fn,
      momentum=opt.momentum,
      nesterov=opt.nesterov,
  )


# config.optimizer -> its optax builder(learning_rate_fn, config.optimizer_configs).
OPTIMIZERS = {'adam': _adam, 'adamw': _adamw, 'momentum': _momentum}


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate_fn: Callable
) -> optax.GradientTransformation:
  """The optax optimizer named by `config.optimizer`, with global-norm clipping when set."""
  config = default_config.with_defaults(config)
  opt, name = config.optimizer_configs, config.optimizer
  check_choice('config.optimizer', name, OPTIMIZERS)
  for key in ('weight_decay', 'epsilon', 'momentum'):
    check_non_negative(f'config.optimizer_configs.{key}', opt[key])
  for key in ('beta1', 'beta2'):
    check_fraction(f'config.optimizer_configs.{key}', opt[key])
  check_positive('config.max_grad_norm', config.max_grad_norm)
  tx = OPTIMIZERS[name](learning_rate_fn, opt)
  if config.max_grad_norm:
    tx = optax.chain(optax.clip_by_global_norm(float(config.max_grad_norm)), tx)
  return tx


def initialize_params(
    flax_model,
    input_shape: tuple[int, ...],
    rng: jnp.ndarray,
    dtype=jnp.float32,
) -> Any:
  """Parameters of `flax_model` for inputs of `input_shape` (batch dimension -1 or any)."""
  dummy = jnp.zeros((1,) + tuple(input_shape[1:]), dtype)
  init = jax.jit(functools.partial(flax_model.init, train=False))
  return flax.core.unfreeze(init({'params': rng}, dummy)['params'])


def create_train_state(
    flax_model,
    input_shape,
    config: ml_collections.ConfigDict,
    learning_rate_fn: Callable,
    rng: jnp.ndarray,
) -> TrainState:
  """A fresh TrainState: initialised parameters, optimizer state, and a base RNG."""
  init_rng, train_rng = jax.random.split(rng)
  params = initialize_params(flax_model, input_shape, init_rng)
  state = TrainState.create(
      apply_fn=flax_model.apply,
      params=params,
      tx=create_optimizer(config, learning_rate_fn),
      rng=train_rng,
      ema_params=params if config.get('ema_decay') is not None else None,
  )
  # A strongly typed step, as the train step returns it, so the second step does not recompile.
  return state.replace(step=jnp.zeros([], jnp.int32))


def ema_decay_at(decay: float, num_updates: jnp.ndarray) -> jnp.ndarray:
  """TF ExponentialMovingAverage's debiased decay: min(decay, (1 + n) / (10 + n)) after n updates.

  Early on the average follows the parameters closely (0.18 after the first update, 0.5
  after the eighth) instead of staying near the random initialisation for ~1 / (1 - decay)
  steps, which would dominate a run of a few thousand steps at decay 0.999.
  """
  n = jnp.asarray(num_updates, jnp.float32)
  return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    loss_fn: Callable,
    metrics_fn: Callable,
    learning_rate_fn: Callable,
    ema_decay: float | None = None,
) -> tuple[TrainState, Metrics]:
  """One data-parallel optimisation step on this device's shard of the global batch.

  Dropout and stochastic-depth keys are folded from the state's RNG by step and device
  index, so every device draws different noise and a resumed run draws the same noise;
  masked pretraining's masks come from the 'masking' stream, folded from the same key.
  With `ema_decay`, `state.ema_params` moves towards the updated parameters by
  1 - ema_decay_at(ema_decay, step after the update).
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  dropout_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(AXIS_NAME))

  def compute_loss(params):
    logits = state.apply_fn(
        {'params': params},
        batch['inputs'],
        train=True,
        rngs={
            'dropout': dropout_rng,
            'masking': jax.random.fold_in(dropout_rng, 1),
        },
    )
    return loss_fn(logits, batch, params), logits

  (_, logits), grads = jax.value_and_grad(compute_loss, has_aux=True)(
      state.params
  )
  grads = jax.lax.pmean(grads, axis_name=AXIS_NAME)
  new_state = state.apply_gradients(grads=grads)
  if ema_decay is not None:
    decay = ema_decay_at(ema_decay, new_state.step)
    new_state = new_state.replace(
        ema_params=optax.incremental_update(
            new_state.params, state.ema_params, step_size=1.0 - decay
        )
    )
  metrics = metrics_fn(logits, batch)
  metrics['learning_rate'] = (learning_rate_fn(state.step), jnp.ones([]))
  metrics['grad_norm'] = (optax.tree.norm(grads), jnp.ones([]))
  return new_state, metrics


def shift_volumes(inputs: jnp.ndarray, axis: int, shift: int) -> jnp.ndarray:
  """`inputs` [N, T, H, W, C] translated by `shift` voxels along volume axis
  `axis` (0 depth, 1 height, 2 width), zero-filled, as training's random
  shifts (`datasets.augmentation`) translate one volume."""
  axis += 1
  n = inputs.shape[axis]
  pad = [(0, 0)] * inputs.ndim
  pad[axis] = (max(shift, 0), max(-shift, 0))
  start = max(-shift, 0)
  return jax.lax.slice_in_dim(jnp.pad(inputs, pad), start, start + n, axis=axis)


def test_time_views(
    inputs: jnp.ndarray, flip_axes: Sequence[int] = (), shift: int = 0
) -> list[jnp.ndarray]:
  """The views test-time augmentation averages over: every combination of
  flips along `flip_axes` (volume axes), each also translated by +-`shift`
  voxels along each volume axis in turn (1 + 6 translations) when `shift`."""
  flip_axes = tuple(sorted(set(int(a) for a in flip_axes)))
  translations = [(0, 0)]
  if shift:
    translations += [(axis, s) for axis in range(3) for s in (-shift, shift)]
  views = []
  for subset in itertools.product((False, True), repeat=len(flip_axes)):
    axes = tuple(1 + a for a, flip in zip(flip_axes, subset) if flip)
    x = jnp.flip(inputs, axis=axes) if axes else inputs
    views += [shift_volumes(x, a, s) if s else x for a, s in translations]
  return views


def predict(
    apply_fn: Callable,
    params: Any,
    inputs: jnp.ndarray,
    flip_axes: Sequence[int] = (),
    shift: int = 0,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Logits and float32 class probabilities of `inputs` [N, T, H, W, C].

  With `flip_axes` (volume axes: 0 depth, 1 height, 2 width) or `shift`
  (voxels), test-time augmentation: the probabilities are the mean of the
  softmax over the views of `test_time_views`, and the logits returned are
  their log (so argmax and cross-entropy score the mean). Evaluation and
  `inference.load_predictor` both predict through this function.
  """
  views = test_time_views(inputs, flip_axes, shift)
  if len(views) == 1:
    logits = apply_fn({'params': params}, inputs, train=False)
    return logits, jax.nn.softmax(logits.astype(jnp.float32))
  total = None
  for x in views:
    p = jax.nn.softmax(
        apply_fn({'params': params}, x, train=False).astype(jnp.float32)
    )
    total = p if total is None else total + p
  probabilities = total / len(views)
  return (
      jnp.log(jnp.maximum(probabilities, jnp.finfo(jnp.float32).tiny)),
      probabilities,
  )


def eval_step(
    state: TrainState,
    batch: Batch,
    *,
    metrics_fn: Callable,
    tta_flip_axes: Sequence[int] = (),
    tta_shift: int = 0,
) -> tuple[Metrics, dict[str, jnp.ndarray]]:
  """Summed, weighted metrics of one evaluation batch, and every device's predictions.

  Predicts with `state.eval_params` (the moving average when kept) through `predict`
  (test-time flips `tta_flip_axes` and shifts `tta_shift`). The predictions
  (probabilities, labels, weights) are gathered over all devices of all processes,
  so each host can compute dataset-level scores such as AUC.
  """
  logits, probabilities = predict(
      state.apply_fn,
      state.eval_params,
      batch['inputs'],
      tta_flip_axes,
      tta_shift,
  )
  outputs = {
      'probabilities': probabilities,
      'labels': jnp.argmax(batch['label'], axis=-1),
      'batch_mask': batch['batch_mask'],
  }
  return metrics_fn(logits, batch), jax.lax.all_gather(outputs, AXIS_NAME)


def pmapped_train_step(model, config, learning_rate_fn, donate=True):
  """`train_step` over the loss and metrics of `model` (a Scenic-style model: loss_function,
  get_metrics_fn), pmapped along AXIS_NAME: `p_train_step(state, batch) -> (state, metrics)`.
  It donates the state's buffers unless `donate=False`."""
  config = default_config.with_defaults(config)
  return jax.pmap(
      functools.partial(
          train_step,
          loss_fn=model.loss_function,
          metrics_fn=model.get_metrics_fn('train'),
          learning_rate_fn=learning_rate_fn,
          ema_decay=config.ema_decay,
      ),
      axis_name=AXIS_NAME,
      donate_argnums=(0,) if donate else (),
  )


def pmapped_steps(model, config, learning_rate_fn, donate=True):
  """The train and eval steps of `model` (a ViViTClassificationModel) for `config`, pmapped
  over the local devices along AXIS_NAME: `pmapped_train_step`, and
  `p_eval_step(state, batch) -> (metrics, predictions)` (see eval_step).
  """
  config = default_config.with_defaults(config)
  p_train_step = pmapped_train_step(model, config, learning_rate_fn, donate)
  p_eval_step = jax.pmap(
      functools.partial(
          eval_step,
          metrics_fn=model.get_metrics_fn('validation'),
          tta_flip_axes=tuple(config.tta_flip_axes),
          tta_shift=config.tta_shift or 0,
      ),
      axis_name=AXIS_NAME,
  )
  return p_train_step, p_eval_step


def replicate(tree):
  """`tree` on every local device: `flax.jax_utils.replicate` with `axis_name=AXIS_NAME`.

  The pmapped steps return their outputs sharded along AXIS_NAME. flax's default axis name
  ('_device_put_sharded' in flax 0.12.8, with jax 0.10.2) gives the first step an input
  sharding that its outputs do not have, so the second step compiles the step again
  (tests/test_train_utils.py::test_train_step_compiles_once fails with it).
  """
  return jax_utils.replicate(tree, axis_name=AXIS_NAME)


def unreplicate(tree):
  """The first replica of a pmap-replicated tree.

  `flax.jax_utils.unreplicate` (flax 0.12.8, jax 0.10.2) returns an array pmapped over one of
  several local devices with its device axis still on: its single shard counts as fully
  replicated, and flax then returns that shard whole
  (tests/test_train_utils.py::test_pmap_over_eight_devices_equals_one_device fails with it).
  """
  return jax.tree_util.tree_map(lambda x: x[0], tree)


def summarize_metrics(metrics_list: list[Metrics]) -> dict[str, float]:
  """Host-side totals: for each metric, sum of numerators over sum of denominators.

  `metrics_list` holds replicated per-step metrics (as returned by the pmapped steps);
  the first replica of each is used since psum made them identical.
  """
  host = jax.device_get([unreplicate(m) for m in metrics_list])
  totals = {}
  for name in host[0]:
    numerator = sum(float(np.asarray(m[name][0])) for m in host)
    denominator = sum(float(np.asarray(m[name][1])) for m in host)
    totals[name] = numerator / max(denominator, 1e-12)
  return totals
