"""Orbax checkpoints of the train state in `<workdir>/checkpoints/<step>/`.

A checkpoint holds the whole resumable state (step, parameters, their moving average when
kept, optimizer state, RNG; the step also fixes the data iterator's position) plus the
dataset metadata needed to rebuild the model for inference. Orbax writes each step
atomically (temporary directory, then rename), keeps the newest `max_checkpoints_to_keep`,
and coordinates processes. With config.best_checkpoint_metric, the state that scored best on
validation is kept in `<workdir>/checkpoints_best/<step>/`, its metadata's 'best' entry
holding the metric, its value and the validation scores.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import serialization

from vivit_flax import default_config


class CheckpointMismatchError(ValueError):
  """The checkpoint in a workdir does not fit the model that the config builds."""


class CheckpointDamagedError(ValueError):
  """The newest checkpoint in a workdir exists but its files cannot be read."""


def checkpoint_dir(workdir: str, best: bool = False) -> str:
  """`<workdir>/checkpoints`, or `<workdir>/checkpoints_best` with `best`."""
  return os.path.join(
      os.path.abspath(workdir), 'checkpoints_best' if best else 'checkpoints'
  )


def create_manager(
    workdir: str,
    config: ml_collections.ConfigDict | None = None,
    best: bool = False,
) -> ocp.CheckpointManager:
  """A CheckpointManager for `workdir`: with `config`, the training run's (keeps
  `config.max_checkpoints_to_keep` steps, or 1 with `best`, and deletes the temporary
  directories of saves that a killed run left behind); without, a read-only one that never
  writes or deletes. `best` manages `checkpoints_best/` instead of `checkpoints/`.
  """
  if config is None:
    options = ocp.CheckpointManagerOptions(read_only=True)
  else:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1
        if best
        else default_config.with_defaults(config).max_checkpoints_to_keep,
        create=True,
        cleanup_tmp_directories=True,
    )
  return ocp.CheckpointManager(
      checkpoint_dir(workdir, best),
      options=options,
      item_handlers={
          'state': ocp.StandardCheckpointHandler(),
          'metadata': ocp.JsonCheckpointHandler(),
      },
  )


def save(
    manager: ocp.CheckpointManager, state, metadata: dict[str, Any]
) -> None:
  """Saves an unreplicated train state (asynchronously; `manager.wait_until_finished()`)."""
  state_dict = jax.device_get(serialization.to_state_dict(state))
  manager.save(
      int(state_dict['step']),
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(state_dict),
          metadata=ocp.args.JsonSave(metadata),
      ),
  )


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
      jax.tree_util.keystr(path): tuple(getattr(leaf, 'shape', ()))
      for path, leaf in flat
  }


def check_compatible(saved_tree, expected_tree, where: str) -> None:
  """Raises CheckpointMismatchError naming the first parameter whose presence or shape differs."""
  saved, expected = _shapes(saved_tree), _shapes(expected_tree)
  # Parameters first: their names say more than the optimizer-state entries that mirror them.
  for name, shape in sorted(
      expected.items(), key=lambda item: "['params']" not in item[0]
  ):
    if name not in saved:
      raise CheckpointMismatchError(
          f"The checkpoint in {where} has no entry {name} that this config's model needs: it was "
          'written by a different model. Use a fresh --workdir, or restore the config it was '
          'trained with (<workdir>/config.json).'
      )
    if saved[name] != shape:
      raise CheckpointMismatchError(
          f'The checkpoint in {where} does not fit this config: {name} has shape {saved[name]} '
          f'there but {shape} in the model this config builds. Use a fresh --workdir, or restore '
          'the config it was trained with (<workdir>/config.json).'
      )
  extra = sorted(set(saved) - set(expected))
  if extra:
    raise CheckpointMismatchError(
        f"The checkpoint in {where} has entries this config's model lacks, e.g. {extra[0]}: it was "
        'written by a different model. Use a fresh --workdir, or restore the config it was '
        'trained with (<workdir>/config.json).'
    )


def restore_latest(manager: ocp.CheckpointManager, state):
  """The newest checkpoint restored into `state`'s structure, or `state` itself if there is none.

  Shapes are compared before any array is read, so a checkpoint of another model fails
  with the name of the first mismatched parameter; a damaged one fails naming its folder.
  Entries that are None in `state` (ema_params without EMA) need not be in the checkpoint; a
  checkpoint without a parameter average restored into a state that keeps one (EMA switched
  on for a resumed run) starts the average from the restored parameters.
  """
  step = manager.latest_step()
  if step is None:
    return state
  where = os.path.join(str(manager.directory), str(step))
  target = jax.device_get(serialization.to_state_dict(state))
  try:
    saved = manager.item_metadata(step)['state']
    start_average = (
        target.get('ema_params') is not None and saved.get('ema_params') is None
    )
    if start_average:
      logging.warning(
          'The checkpoint %s has no parameter average: it starts from its '
          'parameters.',
          where,
      )
      target['ema_params'] = None
    # None entries (no arrays) restore as None whether or not the checkpoint names them.
    absent = {
        key
        for key, value in target.items()
        if value is None and key not in saved
    }
    target = {key: value for key, value in target.items() if key not in absent}
    check_compatible(saved, target, where)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )['state']
    restored.update({key: None for key in absent})
    if start_average:
      restored['ema_params'] = restored['params']
  except CheckpointMismatchError:
    raise
  except (
      Exception
  ) as error:  # Orbax and TensorStore report damage with many exception types.
    raise CheckpointDamagedError(
        f'The checkpoint {where} cannot be read ({type(error).__name__}: {error}); its files are '
        f'damaged. Move {where} out of {manager.directory} to resume from the checkpoint '
        'before it, or use a fresh --workdir.'
    ) from error
  return serialization.from_state_dict(state, restored)


def restore_metadata(manager: ocp.CheckpointManager) -> dict[str, Any] | None:
  """The JSON metadata of the manager's newest checkpoint, or None if it has none."""
  step = manager.latest_step()
  if step is None:
    return None
  return dict(
      manager.restore(
          step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
      )['metadata']
  )


def has_checkpoint(workdir: str, best: bool = False) -> bool:
  """Whether `<workdir>/checkpoints` (or `checkpoints_best`) holds a finished checkpoint (Orbax
  renames a save to its step number when it is complete)."""
  folder = checkpoint_dir(workdir, best)
  return os.path.isdir(folder) and any(
      name.isdigit() for name in os.listdir(folder)
  )


def restore_params(
    workdir: str, checkpoint: str = 'latest', *, moving_average: bool = True
) -> tuple[Any, dict[str, Any]]:
  """Parameters to serve and dataset metadata of a checkpoint in `workdir` (for inference).

  `checkpoint`: 'latest' (the newest in checkpoints/) or 'best' (the one in checkpoints_best/,
  else the newest). The parameters are the moving average where the run kept one, unless
  `moving_average` is False (then the optimizer's own parameters).
  """
  if checkpoint not in ('latest', 'best'):
    raise ValueError(f"checkpoint={checkpoint!r}: use 'best' or 'latest'.")
  best = checkpoint == 'best' and has_checkpoint(workdir, best=True)
  with create_manager(workdir, best=best) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(
          f'No checkpoint in {checkpoint_dir(workdir)}: train first with '
          f'`python main.py --config=... --workdir={workdir}`.'
      )
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), metadata=ocp.args.JsonRestore()
        ),
    )
  state = restored['state']
  use_average = moving_average and state.get('ema_params') is not None
  params = state['ema_params'] if use_average else state['params']
  return jax.tree_util.tree_map(np.asarray, params), dict(restored['metadata'])
