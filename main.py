r"""Trains and evaluates a ViViT model described by an ml_collections config file.

  python main.py --config=configs/synthetic/vivit_demo.py --workdir=/tmp/vivit_demo
  python main.py --config=configs/organmnist3d/vivit_keras_baseline.py --workdir=/tmp/organ \
      --config.batch_size=64

Run as one of several processes (SLURM, Open MPI, Cloud TPU, or explicit
--coordinator_address/--num_processes/--process_id), it joins them through
`jax.distributed` before touching any device.
"""

from absl import app, flags
from ml_collections import config_flags

from vivit_flax import command_line

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
command_line.define_process_flags()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  command_line.start_jax(FLAGS.config.get('deterministic'))
  from vivit_flax import config_validation, trainer  # pylint: disable=g-import-not-at-top

  # Bad input (config, data, checkpoint), a full or failing disk, a lost connection, or a
  # diverged run: the message says what to change.
  with command_line.exit_on(ValueError, OSError, FloatingPointError):
    config_validation.validate(FLAGS.config)
    trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=command_line.parse_flags)
