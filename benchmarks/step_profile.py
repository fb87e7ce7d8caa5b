"""Where a train step's time goes, by kind of XLA operation, from a jax.profiler trace."""

import glob
import gzip
import json
import os
import re
import time

import jax

# Where a train step's time goes, by kind of XLA operation (see profile_train_step).
PROFILE_KINDS = (
    'matrix products',
    'all-reduce and waits for the other devices',
    'layout copies and transposes',
    'random bits for dropout',
    'optimizer update, loss and metrics',
    'other model work (element-wise, reductions)',
)
# Trace events of the CPU runtime that are time spent waiting for other devices: the collective's
# rendezvous, and a parallel matrix product waiting for pool threads busy with another device.
_WAIT_EVENTS = ('Rendezvous', 'Wait: pending_threads')


def _operation_kind(name, line):
  """The PROFILE_KINDS entry of HLO instruction `name` (`line`: its compiled HLO text)."""
  op_name = line.partition('op_name="')[2].partition('"')[0]
  if name.startswith(_WAIT_EVENTS) or any(
      f' {op}(' in line for op in ('all-reduce', 'all-gather', 'reduce-scatter')
  ):
    return PROFILE_KINDS[1]
  # On the CPU, JAX lowers threefry to a rolled loop; the models have no loops of their own.
  if 'threefry' in op_name or ' while(' in line:
    return PROFILE_KINDS[3]
  if any(
      key in name
      for key in ('dot', 'ynn_fusion', 'convolution', 'custom-call', 'gemm')
  ):
    return PROFILE_KINDS[0]
  if name.startswith('copy') or 'transpose' in name:
    return PROFILE_KINDS[2]
  if 'ViViT' not in op_name:
    return PROFILE_KINDS[4]
  return PROFILE_KINDS[5]


def profile_train_step(bench, steps, trace_dir):
  """Milliseconds per step and device by kind of operation, from a jax.profiler trace.

  Traces `steps` train steps into `trace_dir` and adds up the durations of the trace events
  that are instructions of the compiled step (nested ones, such as a loop's body, count once,
  inside their loop) and the CPU runtime's waits for other devices (counted as waits also where
  they happen inside an instruction). Instructions that one device runs at the same time on
  several threads each count in full, so the kinds can add up to more than the wall time.
  Returns the wall time per step and the per-device milliseconds of each PROFILE_KINDS entry.
  """
  hlo = bench.compiled('train').as_text()
  lines = {
      m.group(1): m.group(0)
      for m in re.finditer(r'^\s*(?:ROOT )?%([\w.-]+) = .*$', hlo, re.MULTILINE)
  }
  bench.run('train', 2)
  jax.profiler.start_trace(trace_dir)
  start = time.perf_counter()
  bench.run('train', steps)
  wall = time.perf_counter() - start
  jax.profiler.stop_trace()
  trace_file = sorted(
      glob.glob(
          os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True
      )
  )[-1]
  with gzip.open(trace_file) as f:
    events = json.load(f)['traceEvents']
  spans = sorted(
      (e['tid'], e['ts'], e['dur'], e['name'])
      for e in events
      if e.get('ph') == 'X'
      and (e['name'] in lines or e['name'].startswith(_WAIT_EVENTS))
  )
  totals = dict.fromkeys(PROFILE_KINDS, 0.0)
  thread, end, outer = None, 0.0, None
  for tid, ts, dur, name in spans:
    if (
        tid == thread and ts < end
    ):  # Inside an instruction already counted (e.g. a loop body).
      if name.startswith(_WAIT_EVENTS):  # Waiting inside it moves to the waits.
        totals[outer] -= dur
        totals[PROFILE_KINDS[1]] += dur
      continue
    thread, end = tid, ts + dur
    outer = _operation_kind(name, lines.get(name, ''))
    totals[outer] += dur
  scale = 1e-3 / (
      steps * bench.devices
  )  # Microseconds in all -> ms per step and device.
  return {
      'steps': steps,
      'wall_ms_per_step': 1e3 * wall / steps,
      'ms_per_step_and_device': {kind: t * scale for kind, t in totals.items()},
  }
