r"""Throughput of the ViViT train and eval steps: samples/s, model FLOPs and FLOP utilisation.

The train step is `train_utils.train_step` under `jax.pmap(..., axis_name='batch',
donate_argnums=(0,))` with the state from `train_utils.replicate`, exactly as the trainer builds
it; the eval step is `train_utils.eval_step` under `jax.pmap` (`step_bench`). Each figure is the median over
`--windows` timed windows of `--steps` steps, after `--warmup` untimed steps that include
compilation; a window ends with `jax.block_until_ready` on what the steps returned.

On a CPU-only host the steps run as main.py runs them: one JAX device per core and malloc
keeping freed memory (`vivit_flax.cpu_host`; `--cpu_devices`, `--nokeep_freed_memory` to compare).

Model FLOPs per sample come from the config by formula (`flops.model_flops`) and are cross-checked
against XLA's cost analysis of the compiled steps. Achieved FLOP/s (model FLOPs per sample times
samples/s) is reported as a fraction of the machine's matmul ceiling: a large matrix product
(float32 on CPU, bfloat16 on GPU) timed in the same run.

  # The Keras example's configuration, against the Keras reference (TF and JAX backends):
  python -m benchmarks.throughput --config=configs/organmnist3d/vivit_keras_baseline.py --keras \
      --json=/tmp/throughput.json
  # Several configurations with overrides, and the input pipeline apart from the model:
  python -m benchmarks.throughput --config=configs/organmnist3d/vivit_keras_baseline.py \
      --config=configs/organmnist3d/vivit_best.py --set=model_dtype_str=bfloat16 --pipeline
  # Where the train step's time goes, by kind of XLA operation (a jax.profiler trace):
  python -m benchmarks.throughput --config=configs/organmnist3d/vivit_keras_baseline.py \
      --modes=train --profile_steps=10
  # ViViT-B/16x2 on 32x224x224x3 clips, one of the four variants (see vivit_b.VARIANTS):
  python -m benchmarks.throughput --config=vivit_b/factorized_encoder --batch_size=2 --steps=1 \
      --windows=2 --warmup=1

`--config` takes config files (`get_config()`) or `vivit_b/<attention type>`; `--set key=value`
overrides apply to every config (values are Python literals, else strings; `config_specs`). One
JSON file holds every result (`--json`); one Markdown table row per configuration is printed.
This module is the command line; each part of the run is a module of its own: `measure` (the
timed steps), `matmul_ceiling`, `keras_comparison`, `pipeline_timing`, `step_profile` and
`throughput_report` (what is printed).
"""

import json

import jax
from absl import app, flags

from benchmarks import config_specs
from benchmarks import keras_comparison
from benchmarks import matmul_ceiling
from benchmarks import measure
from benchmarks import pipeline_timing
from benchmarks import step_bench
from benchmarks import step_profile
from benchmarks import throughput_report
from vivit_flax import cpu_host

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run as a script, so importing this module
  registers nothing)."""
  flags.DEFINE_multi_string(
      'config', [], 'Config file (get_config()) or vivit_b/<attention type>.'
  )
  flags.DEFINE_multi_string(
      'set',
      [],
      'key=value override applied to every config, e.g. '
      'model_dtype_str=bfloat16 or model.attention_implementation=xla.',
  )
  flags.DEFINE_integer(
      'batch_size', None, 'Global train batch (default: config.batch_size).'
  )
  flags.DEFINE_integer(
      'per_device_batch',
      None,
      'Per-device train batch; overrides --batch_size.',
  )
  flags.DEFINE_integer(
      'eval_batch_size', None, 'Global eval batch (default: the train batch).'
  )
  flags.DEFINE_list('modes', ['train', 'eval'], 'Steps to time: train, eval.')
  flags.DEFINE_integer('steps', 10, 'Steps per timed window.')
  flags.DEFINE_integer('windows', 5, 'Timed windows; the median is reported.')
  flags.DEFINE_integer(
      'warmup', 2, 'Untimed steps first (compilation, second-step recompiles).'
  )
  flags.DEFINE_bool(
      'donate', True, 'Donate the train state to the step, as the trainer does.'
  )
  flags.DEFINE_integer(
      'sync_every',
      None,
      'Fetch the train metrics to the host every N steps (the '
      'trainer: every config.log_summary_steps, the default); 1 = every step.',
  )
  flags.DEFINE_enum(
      'feed',
      'device',
      step_bench.FEEDS,
      'device: one batch placed on the devices beforehand; '
      'prefetch: a new host batch per step through flax.jax_utils.prefetch_to_device '
      '(as the trainer); host: numpy batches handed to the step.',
  )
  flags.DEFINE_list(
      'input_shape', None, 'T,H,W,C of the clips (default: from the config).'
  )
  flags.DEFINE_integer(
      'num_classes', None, 'Classes (default: from the config).'
  )
  flags.DEFINE_integer(
      'cpu_devices',
      None,
      "JAX devices on a CPU-only host, as main.py's flag "
      '(default: one per core).',
      lower_bound=1,
  )
  flags.DEFINE_bool(
      'keep_freed_memory',
      True,
      'On the CPU, make malloc reuse freed memory as '
      'main.py does (vivit_flax.cpu_host).',
  )
  flags.DEFINE_bool(
      'keras',
      False,
      'Also time the Keras reference (TensorFlow and JAX backends), '
      'interleaved with our train step, and report the ratios.',
  )
  flags.DEFINE_integer(
      'keras_rounds',
      5,
      'Rounds of (our window, Keras TF window, Keras JAX window).',
  )
  flags.DEFINE_integer(
      'keras_batches',
      30,
      'Batches per Keras fit window and per our window (30: one '
      "epoch of the Keras recipe, so fit's per-call set-up counts as in the recipe).",
  )
  flags.DEFINE_integer(
      'profile_steps',
      0,
      'Also trace this many train steps with jax.profiler and '
      'report where their time goes, by kind of XLA operation (0: no profile).',
  )
  flags.DEFINE_string(
      'profile_dir',
      '/tmp/vivit_throughput_profile',
      'Where --profile_steps '
      "writes its trace (TensorBoard's profile plugin reads it too).",
  )
  flags.DEFINE_bool(
      'pipeline',
      False,
      'Also time dataset.train_iter alone (host batches) and '
      "through prefetch_to_device, on the config's dataset (e.g. synthetic3d).",
  )
  flags.DEFINE_integer(
      'ceiling_size',
      None,
      'Matrix size of the ceiling matmul (CPU 2048, GPU 8192).',
  )
  flags.DEFINE_float(
      'max_memory_gb',
      0.0,
      'Skip a step whose compiled program needs more memory '
      'than this per device (XLA memory analysis); 0 = no limit.',
  )
  flags.DEFINE_bool(
      'xla_analysis',
      True,
      "Compile each step once more, ahead of time, for XLA's "
      'FLOP count and memory needs (doubles the compile time).',
  )
  flags.DEFINE_string('json', None, 'Write every result to this JSON file.')
  flags.DEFINE_string(
      'label',
      '',
      'Free text stored with the results (e.g. the lever measured).',
  )


def run_config(spec, ceiling):
  """The result of every measurement the flags ask for on the config `spec`."""
  config = config_specs.load_config(spec, FLAGS.set)
  shape, classes = config_specs.input_spec(config)
  shape = (
      tuple(int(s) for s in FLAGS.input_shape) if FLAGS.input_shape else shape
  )
  classes = FLAGS.num_classes or classes
  batch = (
      FLAGS.per_device_batch * jax.local_device_count()
      if FLAGS.per_device_batch
      else FLAGS.batch_size or config.batch_size
  )
  eval_batch = FLAGS.eval_batch_size or batch
  sync_every = (
      FLAGS.sync_every
      if FLAGS.sync_every is not None
      else config.get('log_summary_steps')
  )
  bench = step_bench.StepBench(
      config,
      shape,
      classes,
      batch,
      eval_batch,
      donate=FLAGS.donate,
      feed=FLAGS.feed,
      sync_every=sync_every,
  )
  result = measure.measure(
      config,
      input_shape=shape,
      num_classes=classes,
      batch_size=batch,
      eval_batch_size=eval_batch,
      modes=FLAGS.modes,
      steps=FLAGS.steps,
      windows=FLAGS.windows,
      warmup=FLAGS.warmup,
      donate=FLAGS.donate,
      feed=FLAGS.feed,
      sync_every=sync_every,
      ceiling=ceiling,
      max_memory_bytes=FLAGS.max_memory_gb * 2**30,
      analyse=FLAGS.xla_analysis,
      bench=bench,
  )
  result['name'] = spec + ''.join(f' {s}' for s in FLAGS.set)
  if FLAGS.keras:
    result['keras'] = keras_comparison.compare(
        bench, FLAGS.keras_rounds, FLAGS.keras_batches
    )
  if FLAGS.pipeline:
    result['pipeline'] = pipeline_timing.throughput(config)
  if FLAGS.profile_steps:
    result['train_profile'] = step_profile.profile_train_step(
        bench, FLAGS.profile_steps, FLAGS.profile_dir
    )
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS.config:
    raise app.UsageError('Give at least one --config.')
  cpu_host.set_cpu_device_count(FLAGS.cpu_devices)
  freed_memory_kept = (
      FLAGS.keep_freed_memory
      and jax.default_backend() == 'cpu'
      and cpu_host.keep_freed_memory()
  )
  info = dict(
      throughput_report.machine_info(), keep_freed_memory=freed_memory_kept
  )
  ceiling = matmul_ceiling.MatmulCeiling(size=FLAGS.ceiling_size)
  ceiling.sample(3)
  results = []
  for spec in FLAGS.config:
    result = run_config(spec, ceiling)
    results.append(result)
    print(
        json.dumps({k: v for k, v in result.items() if k != 'flops_parts'}),
        flush=True,
    )
  print(throughput_report.ceiling_line(ceiling.summary(), info))
  print(throughput_report.MARKDOWN_HEADER)
  for result in results:
    print(throughput_report.markdown_row(result))
  for result in results:
    if 'train_profile' in result:
      print(
          throughput_report.profile_text(
              result['name'], result['train_profile']
          )
      )
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(
          {
              'machine': info,
              'label': FLAGS.label,
              'ceiling': ceiling.summary(),
              'results': results,
          },
          f,
          indent=2,
      )


if __name__ == '__main__':
  define_flags()
  app.run(main)
