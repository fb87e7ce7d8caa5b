"""Train utilities: learning-rate schedule, optimizer, and the pmapped steps against one device."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import jax_utils

from configs.synthetic import vivit_smoke
from vivit_flax import model, train_utils
from vivit_flax.datasets import augmentation


def _config(**lr):
  config = vivit_smoke.get_config()
  config.lr_configs.update(lr)
  return config


def test_compound_schedule_matches_formula():
  config = _config(
      factors='constant * cosine_decay * linear_warmup',
      base_learning_rate=0.5,
      warmup_steps=10,
      steps_per_cycle=110,
  )
  lr_fn = train_utils.create_learning_rate_fn(config, total_steps=110)
  for step in (0, 5, 10, 35, 60, 110, 200):
    warm = min(1.0, step / 10)
    progress = min(max(0.0, (step - 10) / 100), 1.0)
    expected = 0.5 * warm * 0.5 * (1 + math.cos(math.pi * progress))
    assert float(lr_fn(step)) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_unknown_schedule_factor_is_named():
  with pytest.raises(ValueError, match="'cosine_decy'.*known factors"):
    train_utils.create_learning_rate_fn(
        _config(factors='constant * cosine_decy'), 10
    )


def test_gradient_clipping_bounds_the_update():
  config = _config(base_learning_rate=1.0)
  config.optimizer = 'momentum'
  config.optimizer_configs.momentum = 0.0
  config.max_grad_norm = 1.0
  tx = train_utils.create_optimizer(config, lambda _: 1.0)
  params = {'w': jnp.zeros(4)}
  updates, _ = tx.update({'w': jnp.full(4, 10.0)}, tx.init(params), params)
  np.testing.assert_allclose(optax.tree.norm(updates), 1.0, rtol=1e-6)


def test_unknown_optimizer_is_named():
  config = _config()
  config.optimizer = 'adamax'
  with pytest.raises(ValueError, match="'adamax'.*'adam', 'adamw', 'momentum'"):
    train_utils.create_optimizer(config, lambda _: 1.0)


@pytest.mark.parametrize('name', sorted(train_utils.OPTIMIZERS))
def test_every_optimizer_moves_the_parameters_downhill(name):
  config = _config()
  config.optimizer = name
  tx = train_utils.create_optimizer(config, lambda _: 0.1)
  params = {'w': jnp.ones(4)}
  updates, _ = tx.update({'w': jnp.ones(4)}, tx.init(params), params)
  assert (np.asarray(updates['w']) < 0).all()


def _smoke_setup(num_classes=11, global_batch=16):
  config = _config(base_learning_rate=1e-3)
  meta = {
      'num_classes': num_classes,
      'input_shape': (-1, 14, 14, 14, 1),
      'task': 'multi-class',
      'target_is_onehot': True,
  }
  config.model.patches.size = (7, 7, 7)
  vivit = model.get_model_cls(config.model_name)(config, meta)
  lr_fn = train_utils.create_learning_rate_fn(config, 100)
  state = train_utils.create_train_state(
      vivit.flax_model,
      meta['input_shape'],
      config,
      lr_fn,
      jax.random.PRNGKey(0),
  )
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(3):
    labels = rng.integers(0, num_classes, global_batch)
    batches.append(
        {
            'inputs': rng.random(
                (global_batch, 14, 14, 14, 1), dtype=np.float32
            ),
            'label': np.eye(num_classes, dtype=np.float32)[labels],
            'batch_mask': np.ones(global_batch, np.float32),
        }
    )
  step = functools.partial(
      train_utils.train_step,
      loss_fn=vivit.loss_function,
      metrics_fn=vivit.get_metrics_fn('train'),
      learning_rate_fn=lr_fn,
  )
  return state, batches, step


def _run(state, batches, step, num_devices):
  devices = jax.local_devices()[:num_devices]
  p_step = jax.pmap(step, axis_name=train_utils.AXIS_NAME, devices=devices)
  state = jax_utils.replicate(state, devices)
  losses = []
  for batch in batches:
    sharded = jax.tree_util.tree_map(
        lambda x: x.reshape((num_devices, -1) + x.shape[1:]), batch
    )
    state, metrics = p_step(state, sharded)
    losses.append(train_utils.summarize_metrics([metrics])['loss'])
  return jax.device_get(train_utils.unreplicate(state).params), losses


def test_pmap_over_eight_devices_equals_one_device():
  assert jax.local_device_count() >= 8, 'conftest forces 8 host devices'
  state, batches, step = _smoke_setup()
  params_1, losses_1 = _run(state, batches, step, 1)
  params_8, losses_8 = _run(state, batches, step, 8)
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      params_8,
      params_1,
  )
  # And training moved the parameters.
  changed = jax.tree_util.tree_map(
      lambda a, b: bool(np.any(a != b)), params_1, jax.device_get(state.params)
  )
  assert any(jax.tree_util.tree_leaves(changed))


def test_train_step_compiles_once():
  """After the first step nothing is compiled again: no retracing on new batches or states,
  and train_utils.replicate lays the state out as the step returns it (flax's replicate with
  its default axis name does not, and the second step compiles again)."""
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, *_, **__: compiles.append(event)
      if event == '/jax/core/compile/backend_compile_duration'
      else None
  )
  state, batches, step = _smoke_setup()
  p_step = jax.pmap(step, axis_name=train_utils.AXIS_NAME, donate_argnums=(0,))
  state = train_utils.replicate(state)
  n = jax.local_device_count()
  sharded = [
      jax.tree_util.tree_map(lambda x: x.reshape((n, -1) + x.shape[1:]), b)
      for b in batches
  ]
  state, _ = p_step(state, sharded[0])
  jax.block_until_ready(state)
  compiled_by_first_step = len(compiles)
  for batch in sharded[1:]:
    state, _ = p_step(state, batch)
  jax.block_until_ready(state)
  assert compiled_by_first_step > 0
  assert len(compiles) == compiled_by_first_step


def test_summarize_metrics_divides_totals():
  metrics = [
      {'loss': (np.array([6.0]), np.array([3.0]))},
      {'loss': (np.array([2.0]), np.array([1.0]))},
  ]
  assert train_utils.summarize_metrics(metrics) == {'loss': pytest.approx(2.0)}


def _vivit(config=None, counts=(5, 1, 2)):
  config = config or _config()
  meta = {
      'num_classes': len(counts),
      'input_shape': (-1, 14, 14, 14, 1),
      'task': 'multi-class',
      'train_class_counts': counts,
  }
  return model.get_model_cls(config.model_name)(config, meta)


def test_class_weighted_loss_matches_numpy():
  config = _config()
  config.class_weighted_loss = True
  counts = np.array([5, 1, 2, 0])  # Class 3 has no training example: weight 0.
  vivit = _vivit(config, tuple(counts))
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 4)).astype(np.float32)
  labels = rng.dirichlet(np.ones(4), size=6).astype(
      np.float32
  )  # Soft labels, as mixup makes.
  labels[0] = np.eye(4)[1]
  mask = np.array([1, 1, 1, 1, 1, 0], np.float32)
  loss = vivit.loss_function(
      jnp.asarray(logits), {'label': labels, 'batch_mask': mask}
  )

  class_weights = np.where(
      counts > 0, counts.sum() / (4 * np.maximum(counts, 1)), 0.0
  )
  np.testing.assert_allclose(
      vivit.class_weights(), [0.4, 2.0, 1.0, 0.0], rtol=1e-6
  )
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -(labels * log_p).sum(-1)
  expected = (ce * (labels @ class_weights) * mask).sum() / mask.sum()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)

  config.class_weighted_loss = False
  unweighted = _vivit(config, tuple(counts)).loss_function(
      jnp.asarray(logits), {'label': labels, 'batch_mask': mask}
  )
  np.testing.assert_allclose(
      float(unweighted), (ce * mask).sum() / mask.sum(), rtol=1e-5
  )


def test_class_weighted_loss_needs_the_class_counts():
  config = _config()
  config.class_weighted_loss = True
  vivit = model.get_model_cls(config.model_name)(config, {'num_classes': 3})
  with pytest.raises(ValueError, match='train_class_counts'):
    vivit.loss_function(jnp.zeros((2, 3)), {'label': jnp.eye(3)[:2]})


def test_ema_decay_is_debiased_early():
  decays = [
      float(train_utils.ema_decay_at(0.999, n)) for n in (0, 1, 8, 990, 10_000)
  ]
  np.testing.assert_allclose(
      decays, [0.1, 2 / 11, 0.5, 991 / 1000, 0.999], rtol=1e-6
  )


def test_train_step_updates_the_parameter_average():
  state, batches, step = _smoke_setup()
  config = _config(base_learning_rate=1e-3)
  config.ema_decay = 0.9
  state = state.replace(ema_params=state.params)
  ema_step = functools.partial(step, ema_decay=0.9)
  p_step = jax.pmap(
      ema_step, axis_name=train_utils.AXIS_NAME, devices=jax.local_devices()[:1]
  )
  replicated = jax_utils.replicate(state, jax.local_devices()[:1])
  expected = jax.device_get(state.params)
  for n, batch in enumerate(batches[:2], start=1):
    replicated, _ = p_step(
        replicated, jax.tree_util.tree_map(lambda x: x[None], batch)
    )
    new = jax.device_get(train_utils.unreplicate(replicated))
    decay = min(0.9, (1 + n) / (10 + n))
    expected = jax.tree_util.tree_map(
        lambda e, p, d=decay: d * e + (1 - d) * p, expected, new.params
    )
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        new.ema_params,
        expected,
    )
  # Without ema_decay the state keeps no average.
  plain, _ = jax.pmap(
      step, axis_name=train_utils.AXIS_NAME, devices=jax.local_devices()[:1]
  )(
      jax_utils.replicate(
          state.replace(ema_params=None), jax.local_devices()[:1]
      ),
      jax.tree_util.tree_map(lambda x: x[None], batches[0]),
  )
  assert plain.ema_params is None


def test_predict_averages_the_softmax_over_all_flips():
  state, batches, _ = _smoke_setup()
  leaves, tree = jax.tree_util.tree_flatten(
      state.params
  )  # The head starts at zero: perturb.
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  state = state.replace(
      params=jax.tree_util.tree_unflatten(
          tree,
          [
              p + 0.1 * jax.random.normal(k, p.shape)
              for p, k in zip(leaves, keys)
          ],
      )
  )
  x = jnp.asarray(batches[0]['inputs'][:4])

  def probs(v):
    return np.asarray(
        jax.nn.softmax(state.apply_fn({'params': state.params}, v, train=False))
    )

  logits, plain = train_utils.predict(state.apply_fn, state.params, x)
  np.testing.assert_allclose(plain, probs(x), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
      logits, state.apply_fn({'params': state.params}, x, train=False)
  )
  logits, tta = train_utils.predict(state.apply_fn, state.params, x, (0, 2))
  expected = (
      probs(x)
      + probs(x[:, ::-1])
      + probs(x[:, :, :, ::-1])
      + probs(x[:, ::-1, :, ::-1])
  ) / 4
  np.testing.assert_allclose(tta, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(jax.nn.softmax(logits), tta, rtol=1e-5, atol=1e-7)
  assert not np.allclose(tta, plain)


def test_predict_averages_the_softmax_over_shifted_and_flipped_views():
  state, batches, _ = _smoke_setup()
  leaves, tree = jax.tree_util.tree_flatten(state.params)
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  params = jax.tree_util.tree_unflatten(
      tree,
      [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)],
  )
  x = np.asarray(batches[0]['inputs'][:3])

  def probs(v):
    return np.asarray(
        jax.nn.softmax(state.apply_fn({'params': params}, v, train=False))
    )

  def shifted(v, shift):  # the training augmentation's own translation
    return np.stack([augmentation._shift(volume, shift) for volume in v])

  translations = [(0, 0, 0)] + [
      tuple(s if i == axis else 0 for i in range(3))
      for axis in range(3)
      for s in (-2, 2)
  ]
  views = [shifted(v, t) for v in (x, x[:, :, ::-1]) for t in translations]
  expected = np.mean([probs(v) for v in views], axis=0)
  logits, tta = train_utils.predict(
      state.apply_fn, params, jnp.asarray(x), (1,), 2
  )
  assert len(train_utils.test_time_views(jnp.asarray(x), (1,), 2)) == 14
  np.testing.assert_allclose(tta, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(jax.nn.softmax(logits), tta, rtol=1e-5, atol=1e-7)
  _, shifts_only = train_utils.predict(state.apply_fn, params, x, (), 2)
  np.testing.assert_allclose(
      shifts_only,
      np.mean([probs(shifted(x, t)) for t in translations], axis=0),
      rtol=1e-5,
      atol=1e-7,
  )


def test_eval_step_predicts_with_the_parameter_average():
  state, batches, _ = _smoke_setup()
  vivit = _vivit(counts=(1,) * 11)
  leaves, tree = jax.tree_util.tree_flatten(state.params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  shifted = jax.tree_util.tree_unflatten(
      tree,
      [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)],
  )
  p_eval = jax.pmap(
      functools.partial(
          train_utils.eval_step, metrics_fn=vivit.get_metrics_fn('validation')
      ),
      axis_name=train_utils.AXIS_NAME,
      devices=jax.local_devices()[:1],
  )
  batch = jax.tree_util.tree_map(lambda x: x[None], batches[0])
  devices = jax.local_devices()[:1]
  _, with_ema = p_eval(
      jax_utils.replicate(state.replace(ema_params=shifted), devices), batch
  )
  _, shifted_only = p_eval(
      jax_utils.replicate(state.replace(params=shifted), devices), batch
  )
  _, without_ema = p_eval(jax_utils.replicate(state, devices), batch)
  np.testing.assert_array_equal(
      with_ema['probabilities'], shifted_only['probabilities']
  )
  assert not np.allclose(
      with_ema['probabilities'], without_ema['probabilities']
  )
