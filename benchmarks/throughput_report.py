"""The text of benchmarks.throughput: its Markdown table, ceiling and profile lines, and the
machine record stored with its JSON."""

import datetime
import os
import platform
import sys

import jax


def machine_info():
  """Where and when the numbers were taken."""
  device = jax.devices()[0]
  return {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'
      ),
      'host': platform.node(),
      'processor': platform.processor() or platform.machine(),
      'cpu_count': os.cpu_count(),
      'load_average': os.getloadavg(),
      'backend': jax.default_backend(),
      'device_kind': device.device_kind,
      'local_devices': jax.local_device_count(),
      'jax': jax.__version__,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'command': ' '.join(sys.argv),
  }


def _fmt(value, scale=1.0, digits=1):
  return '-' if value is None else f'{value / scale:.{digits}f}'


def markdown_row(result):
  """One Markdown table row (see MARKDOWN_HEADER) for a `measure` result."""
  train, evaluation = result.get('train', {}), result.get('eval', {})
  keras = result.get('keras', {})
  ratio = (
      lambda b: _fmt(keras.get(b, {}).get('ratio'), digits=2) + 'x'
      if b in keras
      else '-'
  )
  return ' | '.join(
      [
          '',
          result['name'],
          result['model_dtype'],
          str(result['batch_size']),
          _fmt(train.get('samples_per_s'))
          + (' (skipped)' if 'skipped' in train else ''),
          _fmt(evaluation.get('samples_per_s')),
          f'{_fmt(train.get("flops_per_sample"), 1e9, 3)} / '
          f'{_fmt(train.get("xla_flops_per_sample"), 1e9, 3)}',
          _fmt(train.get('flops_per_s'), 1e9),
          _fmt(
              100 * train['fraction_of_ceiling']
              if 'fraction_of_ceiling' in train
              else None
          )
          + '%',
          ratio('tensorflow'),
          ratio('jax'),
          '',
      ]
  ).strip()


MARKDOWN_HEADER = (
    '| config | dtype | batch | train samples/s | eval samples/s | '
    'train GFLOP/sample (formula / XLA) | train GFLOP/s | % of matmul ceiling | '
    'vs Keras TF | vs Keras JAX |\n|' + ' --- |' * 10
)


def ceiling_line(ceiling, info):
  """The line that sums up the matmul ceiling (`ceiling`: MatmulCeiling.summary())."""
  return (
      f'matmul ceiling: median {ceiling["flops_per_s"] / 1e9:.1f} GFLOP/s over '
      f'{len(ceiling["all"])} samples ({ceiling["dtype"]} {ceiling["size"]}^3, '
      f'{info["device_kind"]}, load average {info["load_average"][0]:.1f})'
  )


def profile_text(name, profile):
  """A train-step profile (step_profile.profile_train_step) of config `name`, one line a kind."""
  lines = [
      f'\n{name}: train step {profile["wall_ms_per_step"]:.1f} ms wall; per device:'
  ]
  for kind, ms in profile['ms_per_step_and_device'].items():
    lines.append(f'  {ms:7.1f} ms  {kind}')
  return '\n'.join(lines)
