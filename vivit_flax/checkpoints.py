"""Orbax checkpoints of the train state in `<workdir>/checkpoints/<step>/`.

A checkpoint holds the whole resumable state (step, parameters, optimizer state, RNG;
the step also fixes the data iterator's position) plus the dataset metadata needed to
rebuild the model for inference. Orbax writes each step atomically (temporary directory,
then rename), keeps the newest `max_checkpoints_to_keep`, and coordinates processes.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization


class CheckpointMismatchError(ValueError):
  """The checkpoint in a workdir does not fit the model that the config builds."""


class CheckpointDamagedError(ValueError):
  """The newest checkpoint in a workdir exists but its files cannot be read."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def create_manager(workdir: str, config: ml_collections.ConfigDict | None = None,
                   ) -> ocp.CheckpointManager:
  """A CheckpointManager for `workdir`: with `config`, the training run's (keeps
  `config.max_checkpoints_to_keep` steps and deletes the temporary directories of saves
  that a killed run left behind); without, a read-only one that never writes or deletes.
  """
  if config is None:
    options = ocp.CheckpointManagerOptions(read_only=True)
  else:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(config.get('max_checkpoints_to_keep', 3)), create=True,
        cleanup_tmp_directories=True)
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options,
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'metadata': ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, state, metadata: dict[str, Any]) -> None:
  """Saves an unreplicated train state (asynchronously; `manager.wait_until_finished()`)."""
  state_dict = jax.device_get(serialization.to_state_dict(state))
  manager.save(int(state_dict['step']), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state_dict), metadata=ocp.args.JsonSave(metadata)))


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(getattr(leaf, 'shape', ())) for path, leaf in flat}


def check_compatible(saved_tree, expected_tree, where: str) -> None:
  """Raises CheckpointMismatchError naming the first parameter whose presence or shape differs."""
  saved, expected = _shapes(saved_tree), _shapes(expected_tree)
  # Parameters first: their names say more than the optimizer-state entries that mirror them.
  for name, shape in sorted(expected.items(), key=lambda item: "['params']" not in item[0]):
    if name not in saved:
      raise CheckpointMismatchError(
          f'The checkpoint in {where} has no entry {name} that this config\'s model needs: it was '
          'written by a different model. Use a fresh --workdir, or restore the config it was '
          'trained with (<workdir>/config.json).')
    if saved[name] != shape:
      raise CheckpointMismatchError(
          f'The checkpoint in {where} does not fit this config: {name} has shape {saved[name]} '
          f'there but {shape} in the model this config builds. Use a fresh --workdir, or restore '
          'the config it was trained with (<workdir>/config.json).')
  extra = sorted(set(saved) - set(expected))
  if extra:
    raise CheckpointMismatchError(
        f'The checkpoint in {where} has entries this config\'s model lacks, e.g. {extra[0]}: it was '
        'written by a different model. Use a fresh --workdir, or restore the config it was '
        'trained with (<workdir>/config.json).')


def restore_latest(manager: ocp.CheckpointManager, state):
  """The newest checkpoint restored into `state`'s structure, or `state` itself if there is none.

  Shapes are compared before any array is read, so a checkpoint of another model fails
  with the name of the first mismatched parameter; a damaged one fails naming its folder.
  """
  step = manager.latest_step()
  if step is None:
    return state
  where = os.path.join(str(manager.directory), str(step))
  target = jax.device_get(serialization.to_state_dict(state))
  try:
    check_compatible(manager.item_metadata(step)['state'], target, where)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state']
  except CheckpointMismatchError:
    raise
  except Exception as error:  # Orbax and TensorStore report damage with many exception types.
    raise CheckpointDamagedError(
        f'The checkpoint {where} cannot be read ({type(error).__name__}: {error}); its files are '
        f'damaged. Move {where} out of {manager.directory} to resume from the checkpoint '
        'before it, or use a fresh --workdir.') from error
  return serialization.from_state_dict(state, restored)


def restore_params(workdir: str) -> tuple[Any, dict[str, Any]]:
  """Parameters and dataset metadata of the newest checkpoint in `workdir` (for inference)."""
  with create_manager(workdir) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {checkpoint_dir(workdir)}: train first with '
                              f'`python main.py --config=... --workdir={workdir}`.')
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), metadata=ocp.args.JsonRestore()))
  params = jax.tree_util.tree_map(np.asarray, restored['state']['params'])
  return params, dict(restored['metadata'])
