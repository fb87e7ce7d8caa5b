"""What the project's command-line programs (main.py, report, sweep) share: how bad input ends them,
how their flags are parsed, and how the training ones start JAX (alone or as one of several
processes)."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Any, Callable, Iterator, Sequence

from absl import app, flags, logging

FLAGS = flags.FLAGS
# Variables that cluster launchers set when they start several processes of one job.
_CLUSTER_SIZE_VARIABLES = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'PMI_SIZE')


@contextlib.contextmanager
def exit_on(*errors: type[BaseException]) -> Iterator[None]:
  """Ends the program with `error: <message>` (exit status 1) when the block raises one of
  `errors`: bad input whose message says what to change, shown without a traceback (which
  `--verbosity=1` logs)."""
  try:
    yield
  except errors as error:
    logging.debug('Details:', exc_info=True)
    sys.exit(f'error: {error}')


def absl_main(
    run: Callable[[], Any], *errors: type[BaseException]
) -> Callable[[Sequence[str]], None]:
  """The `main(argv)` for `absl.app.run` of a program that takes only flags: it calls `run()`,
  within `exit_on(*errors)`."""

  def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    with exit_on(*errors):
      run()

  return main


def parse_flags(argv):
  """absl's flag parsing; an override of a key the config does not have (`--config.model.hiden_size=8`)
  ends in one line naming it and the likely key, instead of ml_collections' traceback.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as error:
    message = str(error)
    key = re.search(r'(\w+)', message).group(1)
    guess = re.search(r'Did you mean "(\w+)"', message)
    flag = next(
        (
            arg.split('=')[0]
            for arg in argv[1:]
            if arg.startswith('--config.')
            and key in arg.split('=')[0].split('.')
        ),
        f'--config.{key}',
    )
    sys.exit(
        f'FATAL Flags parsing error: {flag}: the config has no key {key!r}.'
        + (
            f' Did you mean {guess.group(1)!r}?'
            if guess
            else ' Check the config file.'
        )
    )


def define_process_flags() -> None:
  """Defines the flags of a program that trains: how it joins a multi-process run, and how many
  JAX devices a CPU-only host gets."""
  flags.DEFINE_string(
      'coordinator_address',
      None,
      'host:port of process 0 for multi-process runs '
      '(not needed under SLURM, Open MPI or on Cloud TPU, where JAX finds it).',
  )
  flags.DEFINE_integer(
      'num_processes', None, 'Number of processes of a multi-process run.'
  )
  flags.DEFINE_integer(
      'process_id', None, "This process's index in a multi-process run."
  )
  flags.DEFINE_list(
      'local_device_ids',
      None,
      'Local devices this process uses (multi-process).',
  )
  flags.DEFINE_integer(
      'cpu_devices',
      None,
      'JAX devices on a CPU-only host (default: one per '
      'core, each running a replica of the pmapped step on its share of the '
      'batch); ignored where XLA_FLAGS forces a count and on GPU/TPU hosts.',
      lower_bound=1,
  )


def launched_as_multiprocess() -> bool:
  """Whether this process is one of several: explicit flags or a cluster launcher's variables."""
  if FLAGS.coordinator_address or (FLAGS.num_processes or 1) > 1:
    return True
  if any(
      int(os.environ.get(name, '1')) > 1 for name in _CLUSTER_SIZE_VARIABLES
  ):
    return True
  return (
      'TPU_WORKER_HOSTNAMES' in os.environ
      and ',' in os.environ['TPU_WORKER_HOSTNAMES']
  )


class _QuietOrbaxInfo(logging.logging.Filter):
  """Drops Orbax's per-save INFO chatter from the console; warnings and errors still pass."""

  def filter(self, record):
    return (
        record.levelno > logging.logging.INFO
        or '/orbax/' not in record.pathname
    )


def start_jax(deterministic: bool = False) -> None:
  """Sets JAX up as `define_process_flags`' flags ask, before anything touches a device: the CPU
  device count, `jax.distributed` when launched as one of several processes, and (with
  `deterministic`) fixed reduction orders on GPUs. TensorFlow, which only writes TensorBoard
  summaries, gets no GPU and one thread per op pool."""
  logging.get_absl_handler().addFilter(_QuietOrbaxInfo())
  if deterministic:
    # Reductions and scatters in a fixed order on GPUs (slower); CPU and TPU runs already are.
    os.environ['XLA_FLAGS'] = ' '.join(
        [os.environ.get('XLA_FLAGS', ''), '--xla_gpu_deterministic_ops=true']
    ).strip()
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vivit_flax import cpu_host  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], 'GPU')
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  cpu_host.set_cpu_device_count(FLAGS.cpu_devices)
  if launched_as_multiprocess():
    jax.distributed.initialize(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
        local_device_ids=[int(i) for i in FLAGS.local_device_ids]
        if FLAGS.local_device_ids
        else None,
    )
  logging.info(
      'JAX process %d of %d, %d local / %d global devices (%s).',
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
      jax.devices()[0].platform,
  )
  if jax.default_backend() == 'cpu':
    cpu_host.keep_freed_memory()
