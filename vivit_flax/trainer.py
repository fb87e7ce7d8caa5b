"""The training loop: init or resume, pmapped steps, periodic logging, evaluation and checkpoints.

Nothing here is model-specific: the model comes from `model.get_model_cls(config.model_name)`,
the data from `datasets.get_dataset(config)`. `config.trainer_name` picks the task the loop runs:
classification ('vivit_trainer') or masked pretraining of the same ViViT ('vivit_mae_pretrainer',
masked_pretraining.py: its own model, steps and evaluation, the same loop).
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from flax import jax_utils

from vivit_flax import checkpoints, datasets, default_config, evaluation, files, masked_pretraining, model, pretrained, train_utils
from vivit_flax.config_checks import check_choice, check_positive

# Scenic's name for the trainer of its ViViT project, and masked pretraining's.
TRAINER_NAMES = ('vivit_trainer', masked_pretraining.TRAINER_NAME)
# Validation scores a best checkpoint can be chosen by (always maximised).
BEST_CHECKPOINT_METRICS = (
    'accuracy',
    'balanced_accuracy',
    'auc',
    'top_5_accuracy',
)
# jax.random.PRNGKey keeps 32 bits of the seed: larger seeds repeat smaller ones.
MAX_SEED = 2**32 - 1


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss or gradient."""


class PreemptionGuard:
  """Turns SIGTERM (sent by schedulers before they kill a job) into a flag the loop polls.

  With several processes, Orbax's `reached_preemption` (JAX's coordination service)
  agrees on one step for all of them; a single process relies on the signal handler.
  """

  def __init__(self, manager):
    self._manager = manager
    self._signalled = False
    self._previous = None
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning(
        'SIGTERM received: checkpointing at the end of this step, then exiting.'
    )
    self._signalled = True

  def reached(self, step: int) -> bool:
    return self._signalled or self._manager.reached_preemption(step)

  def release(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _first_nonfinite(
    metrics_list, first_step: int
) -> tuple[int, str, float] | None:
  """(step, name, value) of the first step in `metrics_list` whose loss or gradient norm is
  NaN or infinite. A non-finite gradient makes the parameters of that same step non-finite,
  before any loss shows it."""
  names = ('loss', 'grad_norm')
  host = jax.device_get(
      [{name: m[name] for name in names} for m in metrics_list]
  )
  for offset, metrics in enumerate(host):
    for name in names:
      value = metrics[name][0][0] / metrics[name][1][0]
      if not np.isfinite(value):
        return first_step + offset, name, float(value)
  return None


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError, saying what to change, for settings of the training loop in `config`
  that cannot work: its name, seed, logging and checkpoint intervals, and best-checkpoint metric.
  """
  config = default_config.with_defaults(config)
  check_choice('config.trainer_name', config.trainer_name, TRAINER_NAMES)
  if not 0 <= config.rng_seed <= MAX_SEED:
    raise ValueError(
        f'config.rng_seed={config.rng_seed} must be in [0, {MAX_SEED}].'
    )
  for key in (
      'log_summary_steps',
      'log_eval_steps',
      'checkpoint_steps',
      'max_checkpoints_to_keep',
  ):
    check_positive(f'config.{key}', config[key])
  if (
      config.trainer_name == masked_pretraining.TRAINER_NAME
      and config.best_checkpoint_metric is not None
  ):
    raise ValueError(
        'Masked pretraining keeps its latest checkpoints only (its validation loss does not'
        ' rank encoders for fine-tuning): unset config.best_checkpoint_metric.'
    )
  if config.best_checkpoint_metric is not None:
    check_choice(
        'config.best_checkpoint_metric',
        config.best_checkpoint_metric,
        BEST_CHECKPOINT_METRICS,
    )


class Trainer:
  """Holds what one training run needs; `run()` executes it and returns the final results."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config = default_config.with_defaults(config)
    check_config(config)
    train_utils.check_config(config)
    self.workdir = workdir
    self.is_chief = jax.process_index() == 0
    self.dataset = datasets.get_dataset(config)
    self.meta = self.dataset.meta_data
    self.pretraining = config.trainer_name == masked_pretraining.TRAINER_NAME
    if self.pretraining:
      masked_pretraining.check_config(config, self.meta['input_shape'])
      self.model = masked_pretraining.ViViTMaskedAutoencoderModel(
          config, self.meta
      )
    else:
      self.model = model.get_model_cls(config.model_name)(config, self.meta)
    self.total_steps = train_utils.total_train_steps(
        config, self.dataset.steps_per_epoch
    )
    self.learning_rate_fn = train_utils.create_learning_rate_fn(
        config, self.total_steps
    )
    self.log_summary_steps = int(config.log_summary_steps or 50)
    self.log_eval_steps = int(
        config.log_eval_steps or self.dataset.steps_per_epoch
    )
    self.checkpoint_steps = int(config.checkpoint_steps or self.log_eval_steps)
    steps = (
        masked_pretraining.pmapped_steps
        if self.pretraining
        else train_utils.pmapped_steps
    )
    self.p_train_step, self.p_eval_step = steps(
        self.model, config, self.learning_rate_fn
    )
    self.writer = metric_writers.create_default_writer(
        workdir,
        just_logging=not (self.is_chief and config.write_summary),
    )
    self.manager = (
        checkpoints.create_manager(workdir, config)
        if config.checkpoint
        else None
    )
    # Keras' ModelCheckpoint(save_best_only=True): the state of the best validation score.
    self.best_metric = config.best_checkpoint_metric
    if self.best_metric and self.manager is None:
      logging.warning(
          'best_checkpoint_metric=%r is ignored: checkpoint=False.',
          self.best_metric,
      )
    self.best_manager = (
        checkpoints.create_manager(workdir, config, best=True)
        if (self.best_metric and self.manager is not None)
        else None
    )
    self.best = None  # {'metric', 'value', 'step', 'validation'} of the best checkpoint so far.
    # Cross-validation folds choose levers, so the test split is never scored in them.
    self.final_splits = (
        ('validation',)
        if config.dataset_configs.num_folds is not None
        else ('validation', 'test')
    )

  def checkpoint_metadata(self) -> dict[str, Any]:
    keys = ('num_classes', 'input_shape', 'label_names', 'task', 'dataset_name')
    return {k: self.meta[k] for k in keys if k in self.meta}

  def initial_state(self) -> train_utils.TrainState:
    """A fresh state, or the newest checkpoint's when the workdir has one."""
    state = train_utils.create_train_state(
        self.model.flax_model,
        self.meta['input_shape'],
        self.config,
        self.learning_rate_fn,
        jax.random.PRNGKey(self.config.rng_seed),
    )
    if self.manager is not None:
      state = checkpoints.restore_latest(self.manager, state)
    if int(state.step) > 0:
      logging.info(
          'Resuming from the checkpoint of step %d in %s.',
          int(state.step),
          self.workdir,
      )
    else:
      params = pretrained.apply_init_from(self.model, state.params)
      state = state.replace(
          params=params, ema_params=None if state.ema_params is None else params
      )
      parameter_overview.log_parameter_overview(state.params)
    if self.best_manager is not None:
      metadata = checkpoints.restore_metadata(self.best_manager)
      self.best = None if metadata is None else metadata.get('best')
      if self.best is not None and self.best.get('metric') != self.best_metric:
        logging.warning(
            'The best checkpoint in %s was chosen by %r, this run by %r: it will be '
            'replaced by the first evaluation.',
            self.best_manager.directory,
            self.best.get('metric'),
            self.best_metric,
        )
        self.best = None
    write_config(self.config, self.workdir)
    return state

  def save(self, state) -> None:
    if self.manager is not None:
      checkpoints.save(
          self.manager,
          train_utils.unreplicate(state),
          self.checkpoint_metadata(),
      )

  def on_devices(self, batches):
    """Host `batches` prefetched onto the local devices, sharded along the steps' axis."""
    return jax_utils.prefetch_to_device(
        batches,
        self.config.dataset_configs.prefetch_to_device,
        axis_name=train_utils.AXIS_NAME,
    )

  def evaluate(
      self, state, split: str, step: int, prefix: str | None = None
  ) -> tuple[dict[str, float], dict]:
    """Scores of `split`, written to TensorBoard as `<prefix>_<metric>` (valid_, test_), and the
    predictions (None for masked pretraining, which scores reconstructions)."""
    batches = self.on_devices(self.dataset.eval_iter(split))
    if self.pretraining:
      results = masked_pretraining.evaluate(self.p_eval_step, state, batches)
      predictions = None
    else:
      results, predictions = evaluation.evaluate(
          self.p_eval_step, state, batches, task=self.meta['task']
      )
    prefix = prefix or ('valid' if split == 'validation' else split)
    self.writer.write_scalars(
        step, {f'{prefix}_{k}': v for k, v in results.items()}
    )
    return results, predictions

  def save_if_best(self, state, scores: dict[str, float], step: int) -> None:
    """Saves `state` to checkpoints_best/ when its validation `scores` beat the best so far
    (strictly, on best_checkpoint_metric, maximised; NaN never does)."""
    if self.best_manager is None:
      return
    if self.best_metric not in scores:
      raise ValueError(
          f'best_checkpoint_metric={self.best_metric!r} is not among the '
          f'validation scores: {", ".join(sorted(scores))}.'
      )
    value = float(scores[self.best_metric])
    if not value > (float('-inf') if self.best is None else self.best['value']):
      return
    self.best = {
        'metric': self.best_metric,
        'value': value,
        'step': step,
        'validation': dict(scores),
    }
    logging.info(
        'Best %s so far (%.6g) at step %d: saving it in %s.',
        self.best_metric,
        value,
        step,
        self.best_manager.directory,
    )
    for (
        later
    ) in (
        self.best_manager.all_steps()
    ):  # Orbax saves no step before its latest one.
      if (
          later >= step
      ):  # A resumed run, with another config, improved on an earlier step.
        self.best_manager.delete(later)
    checkpoints.save(
        self.best_manager,
        train_utils.unreplicate(state),
        self.checkpoint_metadata() | {'best': self.best},
    )

  def flush_train_metrics(
      self, metrics_list, first_step: int, step: int
  ) -> None:
    """Writes the mean train metrics since the last flush; stops on a non-finite loss or gradient."""
    if not metrics_list:
      return
    bad = _first_nonfinite(metrics_list, first_step)
    if bad is not None and self.config.stop_on_nan:
      bad_step, name, value = bad
      raise NonFiniteLossError(
          f'The training {"loss" if name == "loss" else "gradient norm"} is {value} at step '
          f'{bad_step}. The run stopped without writing a checkpoint of this state; the last good '
          'checkpoint is kept. Lower lr_configs.base_learning_rate, set max_grad_norm, or use '
          'model_dtype_str=float32; set stop_on_nan=False to train on regardless.'
      )
    summary = train_utils.summarize_metrics(metrics_list)
    self.writer.write_scalars(
        step, {f'train_{k}': v for k, v in summary.items()}
    )

  def run(self) -> dict[str, Any]:
    config = self.config
    state = self.initial_state()
    start_step = int(state.step)
    state = train_utils.replicate(state)
    guard = PreemptionGuard(self.manager) if self.manager is not None else None
    report = periodic_actions.ReportProgress(
        num_train_steps=self.total_steps, writer=self.writer, every_secs=10.0
    )
    train_iter = self.on_devices(self.dataset.train_iter(start_step))
    logging.info(
        'Training steps %d..%d (%d per epoch) on %d devices (%d processes).',
        start_step + 1,
        self.total_steps,
        self.dataset.steps_per_epoch,
        jax.device_count(),
        jax.process_count(),
    )
    start_time = time.time()
    metrics_list, first_step = [], start_step + 1
    try:
      for step in range(start_step + 1, self.total_steps + 1):
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          state, metrics = self.p_train_step(state, next(train_iter))
        metrics_list.append(metrics)
        report(step)
        preempted = guard is not None and guard.reached(step)
        last = step == self.total_steps
        if (
            step % self.log_summary_steps == 0
            or last
            or preempted
            or (step % self.checkpoint_steps == 0)
        ):
          self.flush_train_metrics(metrics_list, first_step, step)
          metrics_list, first_step = [], step + 1
        if step % self.log_eval_steps == 0 and not last:
          with report.timed('eval'):
            scores, _ = self.evaluate(state, 'validation', step)
            self.save_if_best(state, scores, step)
        if step % self.checkpoint_steps == 0 or last or preempted:
          with report.timed('checkpoint'):
            self.save(state)
        if preempted:
          self.manager.wait_until_finished()
          if self.best_manager is not None:
            self.best_manager.wait_until_finished()
          logging.warning(
              'Preempted: checkpoint of step %d saved in %s; rerun the same command '
              'to resume.',
              step,
              self.workdir,
          )
          return {'preempted_at_step': step}
    finally:
      for manager in (self.manager, self.best_manager):
        if manager is not None:
          manager.wait_until_finished()
      if guard is not None:
        guard.release()
      self.writer.flush()
    return self.final_results(state, time.time() - start_time)

  def final_results(self, state, train_seconds: float) -> dict[str, Any]:
    """Validation and test scores of the final state (validation only in a cross-validation
    fold), written to `<workdir>/results.json`.

    With best_checkpoint_metric, the final validation may also make the final state the best;
    'best' then holds the step, validation and (outside folds) test scores of the best checkpoint.
    """
    results = {
        'dataset': self.meta['dataset_name'],
        'data_file': self.meta.get('data_file'),
        'steps': self.total_steps,
        'train_seconds': train_seconds,
        'num_devices': jax.device_count(),
    }
    for split in self.final_splits:
      scores, predictions = self.evaluate(state, split, self.total_steps)
      results[split] = scores
      logging.info('%s: %s', split, json.dumps(scores))
      if split == 'validation':
        self.save_if_best(state, scores, self.total_steps)
      if predictions is not None:
        matrix_image = evaluation.confusion_matrix_image(
            predictions['confusion_matrix'], self.meta['label_names']
        )
        self.writer.write_images(
            self.total_steps,
            {f'{split}_confusion_matrix': matrix_image[None]},
        )
    if self.best_manager is not None:
      results['best'] = self.best_results(state, results.get('test'))
    if self.is_chief:
      files.write_atomic(
          os.path.join(self.workdir, 'results.json'),
          json.dumps(results, indent=2),
      )
    self.writer.flush()
    return results

  def best_results(
      self, state, final_test: dict[str, float] | None
  ) -> dict[str, Any] | None:
    """{'step', 'validation', 'test'} of the best checkpoint ('test' only where the final state's
    test was scored, `final_test` not None); None if none was saved."""
    self.best_manager.wait_until_finished()
    if self.best is None:
      return None
    step = int(self.best['step'])
    best = {'step': step, 'validation': self.best['validation']}
    if final_test is None:
      return best
    if step == self.total_steps:
      test = final_test
    else:
      best_state = checkpoints.restore_latest(
          self.best_manager, train_utils.unreplicate(state)
      )
      test, _ = self.evaluate(
          train_utils.replicate(best_state),
          'test',
          self.total_steps,
          prefix='best_test',
      )
    logging.info('best (step %d): test %s', step, json.dumps(test))
    return {**best, 'test': test}


def _flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """A nested dict as {'a.b': leaf}."""
  flat = {}
  for key, value in tree.items():
    flat.update(
        _flatten(value, f'{prefix}{key}.')
        if isinstance(value, dict)
        else {f'{prefix}{key}': value}
    )
  return flat


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Saves the run's config as `<workdir>/config.json` (process 0 only), warning about the
  keys in which it differs from the config.json already there (what a resumed run changed).

  Called once the workdir's checkpoint, if any, was found to fit this config, so a
  rejected config never overwrites the one the checkpoint was trained with.
  """
  if jax.process_index() != 0:
    return
  path, text = os.path.join(workdir, 'config.json'), config.to_json_best_effort(
      indent=2
  )
  try:
    with open(path) as f:
      old, new = _flatten(json.load(f)), _flatten(json.loads(text))
  except (
      OSError,
      ValueError,
  ):  # No config.json yet, or an unreadable one: nothing to compare.
    old = new = {}
  changed = sorted(
      key for key in old.keys() | new.keys() if old.get(key) != new.get(key)
  )
  if changed:
    logging.warning(
        "This run's config differs from the previous one in %s, which it "
        'replaces, in: %s.',
        path,
        ', '.join(changed),
    )
  os.makedirs(workdir, exist_ok=True)
  files.write_atomic(path, text)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint) and returns the results.

  A config whose init_from asks for masked pretraining first (masked_pretraining.
  pretraining_stage) trains that in `<workdir>/masked_pretraining` (resuming it, or skipping it
  once its results.json exists), then fine-tunes from it; a preempted pretraining returns its
  own results, and the same command resumes it.
  """
  stage = masked_pretraining.pretraining_stage(config, workdir)
  if stage is not None:
    pretraining, pretraining_workdir = stage
    if not os.path.exists(os.path.join(pretraining_workdir, 'results.json')):
      results = Trainer(pretraining, pretraining_workdir).run()
      if 'preempted_at_step' in results:
        return results
    config = ml_collections.ConfigDict(config.to_dict())
    del config.init_from['masked_pretraining']
    config.init_from.checkpoint_path = pretraining_workdir
    config.init_from.checkpoint_format = 'vivit'
  return Trainer(config, workdir).run()
