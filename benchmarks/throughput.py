r"""Throughput of the ViViT train and eval steps: samples/s, model FLOPs and FLOP utilisation.

The train step is `train_utils.train_step` under `jax.pmap(..., axis_name='batch',
donate_argnums=(0,))` with the state from `train_utils.replicate`, exactly as the trainer builds
it; the eval step is `train_utils.eval_step` under `jax.pmap`. Each figure is the median over
`--windows` timed windows of `--steps` steps, after `--warmup` untimed steps that include
compilation; a window ends with `jax.block_until_ready` on what the steps returned.

On a CPU-only host the steps run as main.py runs them: one JAX device per core and malloc
keeping freed memory (`vivit_flax.cpu_host`; `--cpu_devices`, `--nokeep_freed_memory` to compare).

Model FLOPs per sample come from the config by formula (`model_flops`) and are cross-checked
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
  # ViViT-B/16x2 on 32x224x224x3 clips, one of the four variants (see VIVIT_B_VARIANTS):
  python -m benchmarks.throughput --config=vivit_b/factorized_encoder --batch_size=2 --steps=1 \
      --windows=2 --warmup=1

`--config` takes config files (`get_config()`) or `vivit_b/<attention type>`; `--set key=value`
overrides apply to every config (values are Python literals, else strings). One JSON file holds
every result (`--json`); one Markdown table row per configuration is printed.
"""

import ast
import datetime
import functools
import glob
import gzip
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from configs.organmnist3d import vivit_keras_baseline
from vivit_flax import cpu_host
from vivit_flax import model as vivit_model
from vivit_flax import train_utils
from vivit_flax.datasets import input_pipeline

VIVIT_B_VARIANTS = (
    'spacetime',
    'factorized_encoder',
    'factorized_self_attention_block',
    'factorized_dot_product_attention',
)
VIVIT_B_INPUT = (32, 224, 224, 3)
KINETICS_CLASSES = 400
FEEDS = ('device', 'prefetch', 'host')
COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'

FLAGS = flags.FLAGS


def vivit_b_config(attention_type):
  """ViViT-B/16x2 (Scenic's Kinetics-400 sizes) for one attention variant.

  Derived from the Keras baseline config: hidden 768, 12 heads, MLP 3072, 12 layers (Model 2:
  12 spatial and 4 temporal layers), 16x16x2 tubelets with the central-frame initialiser, no
  dropout; a class token for Models 1 and 2, global average pooling for Models 3 and 4.
  """
  if attention_type not in VIVIT_B_VARIANTS:
    raise ValueError(
        f'Unknown ViViT-B variant {attention_type!r}; use one of {VIVIT_B_VARIANTS}.'
    )
  config = vivit_keras_baseline.get_config()
  config.experiment_name = f'vivit_b16x2_{attention_type}'
  config.dataset_name = 'npz_video'
  m = config.model
  m.attention_config.type = attention_type
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 768, 12, 3072, 12
  m.spatial_transformer = ml_collections.ConfigDict(
      dict(num_heads=12, mlp_dim=3072, num_layers=12)
  )
  m.temporal_transformer = ml_collections.ConfigDict(
      dict(num_heads=12, mlp_dim=3072, num_layers=4)
  )
  m.patches.size = (16, 16, 2)
  m.patches.drop_remainder = False
  m.temporal_encoding_config.kernel_init_method = 'central_frame_initializer'
  m.classifier = (
      'token'
      if attention_type in ('spacetime', 'factorized_encoder')
      else 'gap'
  )
  m.dropout_rate = m.attention_dropout_rate = 0.0
  config.batch_size = config.eval_batch_size = 2
  return config


def load_config(spec, overrides=()):
  """The config named by `spec` (a config file or vivit_b/<type>) with `key=value` overrides."""
  if spec.startswith('vivit_b/'):
    config = vivit_b_config(spec.split('/', 1)[1])
  else:
    module_spec = importlib.util.spec_from_file_location('bench_config', spec)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config()
  for item in overrides:
    key, _, text = item.partition('=')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, leaf = key.split('.')
    node = config
    for name in parents:
      node = node[name]
    with node.ignore_type():
      node[leaf] = value
  return config


def input_spec(config):
  """(T, H, W, C) clips and class count the config trains on, without loading its data."""
  if config.get('experiment_name', '').startswith('vivit_b16x2'):
    return VIVIT_B_INPUT, KINETICS_CLASSES
  if config.dataset_name == 'medmnist3d':
    from vivit_flax.datasets import medmnist3d

    size = config.dataset_configs.get('size', 28)
    labels = medmnist3d.medmnist_info()[config.dataset_configs.name]['label']
    return (size, size, size, 1), len(labels)
  if config.dataset_name == 'synthetic3d':
    from vivit_flax.datasets import synthetic

    return (synthetic.SIZE,) * 3 + (1,), synthetic.NUM_CLASSES
  raise ValueError(
      f'Give --input_shape and --num_classes for dataset {config.dataset_name!r}.'
  )


def model_flops(flax_model, input_shape, num_classes):
  """Model FLOPs per sample (one multiply-add = 2 FLOPs; matrix products only).

  With D = hidden size, M = MLP width, N tokens in a transformer and L the length of the axis a
  token attends along (summed over the heads that attend along it, as a fraction of them):
    tokeniser        2 * tokens * (t*h*w*C) * D                (tubelet or 2D patch embedding)
    per layer        8 * N * D^2                               (Q, K, V and output projections)
                   + 4 * N * L * D                             (scores Q.K and weighted sum P.V)
                   + 4 * N * D * M                             (the two MLP layers)
    head             2 * D * classes  (or 2*D*R + 2*R*classes with a representation layer)
  Model 1: one encoder over all N = t*h*w (+1 class token) tokens, L = N. Model 2: a spatial
  encoder over t sequences of h*w (+1) tokens, then a temporal encoder over t (+1) tokens.
  Model 3: per layer two attention sub-layers (L = t over time, L = h*w over space), each with
  its own projections. Model 4: one sub-layer, half the heads with L = t, half with L = h*w.
  A train step costs 3x the forward pass (forward, input gradients, weight gradients) less the
  tokeniser's input gradient, which is never computed (the clips are not differentiated).
  Element-wise work (LayerNorm, softmax, GELU, the optimizer) is not counted: XLA's cost
  analysis, which counts it, comes out a few percent higher.
  """
  t_in, h_in, w_in, c = input_shape
  gt, gh, gw = flax_model.token_grid((t_in, h_in, w_in))
  d = flax_model.hidden_size
  ph, pw = flax_model.patch_size[:2]
  pt = (
      1
      if flax_model.tokenizer == 'temporal_sampling'
      else flax_model.patch_size[2]
  )
  cls = int(flax_model.classifier == 'token')
  space = gh * gw

  def encoder(size, sequences, length, sublayers):
    """FLOPs of an encoder over `sequences` sequences of `length` tokens; each attention
    sub-layer is a list of (attended length, fraction of the heads)."""
    n = sequences * length
    layer = 4 * n * d * size.mlp_dim
    for sublayer in sublayers:
      layer += 8 * n * d * d + sum(
          4 * n * span * d * share for span, share in sublayer
      )
    return int(size.num_layers * layer)

  parts = {'tokenizer': 2 * gt * space * pt * ph * pw * c * d}
  kind = flax_model.attention_type
  if kind == 'factorized_encoder':
    parts['spatial_encoder'] = encoder(
        flax_model.spatial_transformer, gt, space + cls, [[(space + cls, 1.0)]]
    )
    parts['temporal_encoder'] = encoder(
        flax_model.temporal_transformer, 1, gt + cls, [[(gt + cls, 1.0)]]
    )
  else:
    tokens = gt * space + cls
    sublayers = {
        'spacetime': [[(tokens, 1.0)]],
        'factorized_self_attention_block': [[(gt, 1.0)], [(space, 1.0)]],
        'factorized_dot_product_attention': [[(gt, 0.5), (space, 0.5)]],
    }[kind]
    parts['encoder'] = encoder(flax_model.transformer, 1, tokens, sublayers)
  r = flax_model.representation_size
  parts['head'] = (
      2 * d * num_classes if r is None else 2 * d * r + 2 * r * num_classes
  )
  forward = sum(parts.values())
  return {
      'forward': forward,
      'train': 3 * forward - parts['tokenizer'],
      'parts': parts,
  }


class MatmulCeiling:
  """The machine's matmul ceiling: FLOP/s of a large square matrix product on the default device
  with the default threads (float32 on CPU, bfloat16 on accelerators). `sample()` times one
  product; the benchmark samples it between its timed windows, so that ceiling and step see the
  same machine load."""

  def __init__(self, dtype=None, size=None):
    on_cpu = jax.default_backend() == 'cpu'
    self.dtype = jnp.dtype(dtype or (jnp.float32 if on_cpu else jnp.bfloat16))
    self.size = size or (2048 if on_cpu else 8192)
    self.samples = []
    keys = jax.random.split(jax.random.key(0))
    self._operands = [
        jax.random.normal(k, (self.size,) * 2, self.dtype) for k in keys
    ]
    self._product = jax.jit(jnp.matmul)
    jax.block_until_ready(self._product(*self._operands))
    start = time.perf_counter()
    jax.block_until_ready(self._product(*self._operands))
    # Products per sample: enough for 50 ms, so dispatch does not count on a fast device.
    self.inner = max(1, int(0.05 / (time.perf_counter() - start)))

  def sample(self, repeats=1):
    """Times `repeats` samples of `inner` back-to-back products; returns and keeps their FLOP/s."""
    rates = []
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(self.inner):
        out = self._product(*self._operands)
      jax.block_until_ready(out)
      rates.append(
          2 * self.size**3 * self.inner / (time.perf_counter() - start)
      )
    self.samples.extend(rates)
    return rates

  def summary(self, rates=None):
    """Median FLOP/s of `rates` (default: every sample so far), with the product's shape."""
    rates = self.samples if rates is None else rates
    return {
        'flops_per_s': _median(rates),
        'all': rates,
        'size': self.size,
        'dtype': self.dtype.name,
    }


class CompileCounter:
  """Counts XLA backend compilations from the moment it is created (a jax.monitoring listener)."""

  def __init__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, *args, **kwargs):
    del args, kwargs
    if event == COMPILE_EVENT:
      self.count += 1


_COMPILES = None


def compile_counter():
  """The process's CompileCounter (listeners cannot be removed, so there is one)."""
  global _COMPILES
  if _COMPILES is None:
    _COMPILES = CompileCounter()
  return _COMPILES


def random_batch(rng, per_device, input_shape, num_classes, devices):
  """A host batch laid out as the datasets serve it: [devices, per_device, ...]."""
  labels = rng.integers(0, num_classes, (devices, per_device))
  return {
      'inputs': rng.random(
          (devices, per_device) + tuple(input_shape), dtype=np.float32
      ),
      'label': np.eye(num_classes, dtype=np.float32)[labels],
      'batch_mask': np.ones((devices, per_device), np.float32),
  }


def _median(values):
  return statistics.median(values) if values else None


class StepBench:
  """The trainer's pmapped train and eval steps for one config, on random data, timed by window.

  Attributes:
    config: the experiment config.
    input_shape, num_classes: the clips (T, H, W, C) and class count.
    batch_size, eval_batch_size: global batches.
    state: the replicated TrainState (advanced by every timed train step).
  """

  def __init__(
      self,
      config,
      input_shape,
      num_classes,
      batch_size,
      eval_batch_size,
      donate=True,
      feed='device',
      sync_every=None,
      seed=0,
  ):
    self.config = config
    self.input_shape = tuple(input_shape)
    self.num_classes = num_classes
    self.devices = jax.local_device_count()
    self.batch_size = batch_size
    self.eval_batch_size = eval_batch_size
    self.feed = feed
    self.sync_every = sync_every
    meta = {'num_classes': num_classes, 'input_shape': (-1,) + self.input_shape}
    self.model = vivit_model.get_model_cls(config.model_name)(config, meta)
    lr_fn = train_utils.create_learning_rate_fn(config, 10_000)
    state = train_utils.create_train_state(
        self.model.flax_model,
        meta['input_shape'],
        config,
        lr_fn,
        jax.random.PRNGKey(seed),
    )
    self.state = train_utils.replicate(state)
    self.p_train_step = jax.pmap(
        functools.partial(
            train_utils.train_step,
            loss_fn=self.model.loss_function,
            metrics_fn=self.model.get_metrics_fn('train'),
            learning_rate_fn=lr_fn,
        ),
        axis_name=train_utils.AXIS_NAME,
        donate_argnums=(0,) if donate else (),
    )
    self.p_eval_step = jax.pmap(
        functools.partial(
            train_utils.eval_step,
            metrics_fn=self.model.get_metrics_fn('validation'),
        ),
        axis_name=train_utils.AXIS_NAME,
    )
    rng = np.random.default_rng(seed)
    self.host = {
        mode: [
            random_batch(
                rng,
                input_pipeline.per_device_batch_size(b, 1, self.devices),
                self.input_shape,
                num_classes,
                self.devices,
            )
            for _ in range(2)
        ]
        for mode, b in (('train', batch_size), ('eval', eval_batch_size))
    }
    self.on_device = {
        mode: next(input_pipeline.prefetch_to_device(iter(batches[:1]), 1))
        for mode, batches in self.host.items()
    }
    self.steps_done = {'train': 0, 'eval': 0}

  def batches(self, mode, steps):
    """`steps` batches for `mode`, fed as FLAGS-style `feed` says."""
    if self.feed == 'device':
      return iter([self.on_device[mode]] * steps)
    host = (self.host[mode][i % 2] for i in range(steps))
    if self.feed == 'prefetch':
      return input_pipeline.prefetch_to_device(host, 2)
    return host

  def run(self, mode, steps):
    """Runs `steps` steps of `mode`, as the trainer does, and waits for their results."""
    sync_every = self.sync_every
    out, pending = None, []
    guard = 'allow' if self.feed == 'host' else 'disallow'
    with jax.transfer_guard(guard):
      for batch in self.batches(mode, steps):
        if mode == 'train':
          self.state, out = self.p_train_step(self.state, batch)
          pending.append(out)
          if sync_every and (self.steps_done['train'] + 1) % sync_every == 0:
            jax.device_get(pending)
            pending = []
        else:
          out = self.p_eval_step(self.state, batch)
        self.steps_done[mode] += 1
    jax.block_until_ready((self.state, out))

  def window(self, mode, steps):
    """Samples/s of one window of `steps` steps."""
    batch = self.batch_size if mode == 'train' else self.eval_batch_size
    start = time.perf_counter()
    self.run(mode, steps)
    return steps * batch / (time.perf_counter() - start)

  def compiled(self, mode):
    """The AOT-compiled step of `mode` (for XLA's cost and memory analysis)."""
    batch = self.on_device[mode]
    if mode == 'train':
      return self.p_train_step.lower(self.state, batch).compile()
    return self.p_eval_step.lower(self.state, batch).compile()


def xla_analysis(bench, mode):
  """XLA's FLOPs per sample and memory (bytes per device) of the compiled step of `mode`."""
  compiled = bench.compiled(mode)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  per_device = (
      bench.batch_size if mode == 'train' else bench.eval_batch_size
  ) // bench.devices
  result = {'xla_flops_per_sample': float(cost.get('flops', 0.0)) / per_device}
  memory = compiled.memory_analysis()
  if memory is not None:
    result['memory_bytes'] = int(
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
  return result


def measure(
    config,
    *,
    input_shape,
    num_classes,
    batch_size,
    eval_batch_size=None,
    modes=('train', 'eval'),
    steps=10,
    windows=5,
    warmup=2,
    donate=True,
    feed='device',
    sync_every=None,
    ceiling=None,
    max_memory_bytes=0,
    analyse=True,
    bench=None,
):
  """Times the train/eval steps of `config` and returns a JSON-ready dict of the results.

  Per mode: samples/s (median and every window), FLOPs per sample (formula and XLA), achieved
  FLOP/s and its fraction of the matmul ceiling (a MatmulCeiling, sampled after each window), and
  the number of compilations during the timed windows (0 when nothing recompiles after warm-up).
  """
  eval_batch_size = eval_batch_size or batch_size
  bench = bench or StepBench(
      config,
      input_shape,
      num_classes,
      batch_size,
      eval_batch_size,
      donate=donate,
      feed=feed,
      sync_every=sync_every,
  )
  flops = model_flops(bench.model.flax_model, input_shape, num_classes)
  result = {
      'experiment': config.get('experiment_name'),
      'input_shape': list(input_shape),
      'num_classes': num_classes,
      'batch_size': batch_size,
      'eval_batch_size': eval_batch_size,
      'devices': bench.devices,
      'model_dtype': config.get('model_dtype_str', 'float32'),
      'attention_type': bench.model.flax_model.attention_type,
      'attention_implementation': bench.model.flax_model.attention_implementation,
      'donate': donate,
      'feed': feed,
      'sync_every': sync_every,
      'steps': steps,
      'windows': windows,
      'warmup': warmup,
      'flops_parts': flops['parts'],
  }
  counter = compile_counter()
  for mode in modes:
    entry = {
        'flops_per_sample': flops['train' if mode == 'train' else 'forward']
    }
    if analyse or max_memory_bytes:
      entry.update(xla_analysis(bench, mode))
    if max_memory_bytes and entry.get('memory_bytes', 0) > max_memory_bytes:
      entry['skipped'] = (
          f'needs {entry["memory_bytes"] / 2**30:.1f} GiB per device'
      )
      result[mode] = entry
      continue
    bench.run(mode, warmup)
    before = counter.count
    rates, ceilings = [], []
    for _ in range(windows):
      rates.append(bench.window(mode, steps))
      if ceiling:
        ceilings.extend(ceiling.sample())
    entry.update(
        samples_per_s=_median(rates),
        samples_per_s_all=rates,
        compiles_in_windows=counter.count - before,
    )
    entry['flops_per_s'] = entry['flops_per_sample'] * entry['samples_per_s']
    if ceiling:
      entry['ceiling'] = ceiling.summary(ceilings)
      entry['fraction_of_ceiling'] = (
          entry['flops_per_s'] / entry['ceiling']['flops_per_s']
      )
    result[mode] = entry
  state_sharding = jax.tree_util.tree_leaves(bench.state)[0].sharding
  result['batch_sharding_matches_step'] = (
      bench.on_device['train']['inputs'].sharding == state_sharding
  )
  return result


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


def keras_comparison(bench, rounds, num_batches):
  """Interleaved rounds of (our train window, Keras TF fit window, Keras JAX fit window), each
  of `num_batches` batches of the bench's global batch; medians and ratios of samples/s.
  """
  from benchmarks import keras_reference

  ours, theirs = [], {backend: [] for backend in keras_reference.BACKENDS}
  jit_compile = {}
  bench.run('train', 2)
  for _ in range(rounds):
    ours.append(bench.window('train', num_batches))
    for backend in keras_reference.BACKENDS:
      reference = keras_reference.run_reference(
          backend,
          batch_size=bench.batch_size,
          num_batches=num_batches,
          repeats=1,
      )
      theirs[backend].append(reference['train_samples_per_s'])
      jit_compile[backend] = reference['jit_compile']
  result = {
      'rounds': rounds,
      'num_batches': num_batches,
      'ours_samples_per_s': _median(ours),
      'ours_all': ours,
  }
  for backend, rates in theirs.items():
    result[backend] = {
        'samples_per_s': _median(rates),
        'all': rates,
        'ratio': _median(ours) / _median(rates),
        'jit_compile': jit_compile[backend],
    }
  return result


def pipeline_throughput(config, batches=50, windows=5):
  """Samples/s of dataset.train_iter alone (host batches) and through prefetch_to_device."""
  from vivit_flax import datasets

  dataset = datasets.get_dataset(config)
  result = {'dataset': config.dataset_name, 'batch_size': config.batch_size}
  for name in ('host', 'prefetch_to_device'):
    iterator = dataset.train_iter(0)
    if name == 'prefetch_to_device':
      iterator = input_pipeline.prefetch_to_device(
          iterator, config.dataset_configs.get('prefetch_to_device', 2)
      )
    next(iterator)
    rates = []
    for _ in range(windows):
      start = time.perf_counter()
      for _ in range(batches):
        jax.block_until_ready(next(iterator))
      rates.append(batches * config.batch_size / (time.perf_counter() - start))
    result[name] = {'samples_per_s': _median(rates), 'all': rates}
  return result


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
      FEEDS,
      'device: one batch placed on the devices beforehand; '
      'prefetch: a new host batch per step through input_pipeline.prefetch_to_device '
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
  info = dict(machine_info(), keep_freed_memory=freed_memory_kept)
  ceiling = MatmulCeiling(size=FLAGS.ceiling_size)
  ceiling.sample(3)
  results = []
  for spec in FLAGS.config:
    config = load_config(spec, FLAGS.set)
    shape, classes = input_spec(config)
    shape = (
        tuple(int(s) for s in FLAGS.input_shape) if FLAGS.input_shape else shape
    )
    classes = FLAGS.num_classes or classes
    devices = jax.local_device_count()
    batch = (
        FLAGS.per_device_batch * devices
        if FLAGS.per_device_batch
        else FLAGS.batch_size or config.batch_size
    )
    sync_every = (
        FLAGS.sync_every
        if FLAGS.sync_every is not None
        else config.get('log_summary_steps')
    )
    bench = StepBench(
        config,
        shape,
        classes,
        batch,
        FLAGS.eval_batch_size or batch,
        donate=FLAGS.donate,
        feed=FLAGS.feed,
        sync_every=sync_every,
    )
    result = measure(
        config,
        input_shape=shape,
        num_classes=classes,
        batch_size=batch,
        eval_batch_size=FLAGS.eval_batch_size or batch,
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
      result['keras'] = keras_comparison(
          bench, FLAGS.keras_rounds, FLAGS.keras_batches
      )
    if FLAGS.pipeline:
      result['pipeline'] = pipeline_throughput(config)
    if FLAGS.profile_steps:
      result['train_profile'] = profile_train_step(
          bench, FLAGS.profile_steps, FLAGS.profile_dir
      )
    results.append(result)
    print(
        json.dumps({k: v for k, v in result.items() if k != 'flops_parts'}),
        flush=True,
    )
  overall = ceiling.summary()
  print(
      f'matmul ceiling: median {overall["flops_per_s"] / 1e9:.1f} GFLOP/s over '
      f'{len(overall["all"])} samples ({overall["dtype"]} {overall["size"]}^3, '
      f'{info["device_kind"]}, load average {info["load_average"][0]:.1f})'
  )
  print(MARKDOWN_HEADER)
  for result in results:
    print(markdown_row(result))
  for result in results:
    if 'train_profile' in result:
      profile = result['train_profile']
      print(
          f'\n{result["name"]}: train step {profile["wall_ms_per_step"]:.1f} ms wall; per device:'
      )
      for kind, ms in profile['ms_per_step_and_device'].items():
        print(f'  {ms:7.1f} ms  {kind}')
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
