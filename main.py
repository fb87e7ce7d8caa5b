r"""Trains and evaluates a ViViT model described by an ml_collections config file.

  python main.py --config=configs/synthetic/vivit_demo.py --workdir=/tmp/vivit_demo
  python main.py --config=configs/organmnist3d/vivit_keras_baseline.py --workdir=/tmp/organ \
      --config.batch_size=64

Run as one of several processes (SLURM, Open MPI, Cloud TPU, or explicit
--coordinator_address/--num_processes/--process_id), it joins them through
`jax.distributed` before touching any device.
"""

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (get_config()).', lock_config=True
)
flags.DEFINE_string(
    'workdir',
    None,
    'Directory for checkpoints, TensorBoard summaries and '
    'results.json; a run resumes from the newest checkpoint found here.',
)
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
    'local_device_ids', None, 'Local devices this process uses (multi-process).'
)
flags.DEFINE_integer(
    'cpu_devices',
    None,
    'JAX devices on a CPU-only host (default: one per '
    'core, each running a replica of the pmapped step on its share of the '
    'batch); ignored where XLA_FLAGS forces a count and on GPU/TPU hosts.',
    lower_bound=1,
)
flags.mark_flags_as_required(['config', 'workdir'])

# Variables that cluster launchers set when they start several processes of one job.
_CLUSTER_SIZE_VARIABLES = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'PMI_SIZE')


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_handler().addFilter(_QuietOrbaxInfo())
  if FLAGS.config.get('deterministic'):
    # Reductions and scatters in a fixed order on GPUs (slower); CPU and TPU runs already are.
    os.environ['XLA_FLAGS'] = ' '.join(
        [os.environ.get('XLA_FLAGS', ''), '--xla_gpu_deterministic_ops=true']
    ).strip()
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vivit_flax import command_line, config_validation, cpu_host, trainer  # pylint: disable=g-import-not-at-top

  # TensorFlow only writes TensorBoard summaries (through clu): no GPU, and one thread for
  # each of its op pools, which otherwise compete with the train step for the cores.
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
  # Bad input (config, data, checkpoint), a full or failing disk, a lost connection, or a
  # diverged run: the message says what to change.
  with command_line.exit_on(ValueError, OSError, FloatingPointError):
    config_validation.validate(FLAGS.config)
    trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
