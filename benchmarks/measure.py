"""Samples/s, model FLOPs and FLOP utilisation of one config's train and eval steps."""

import jax

from benchmarks import compile_counter, flops, step_bench, timing


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
  bench = bench or step_bench.StepBench(
      config,
      input_shape,
      num_classes,
      batch_size,
      eval_batch_size,
      donate=donate,
      feed=feed,
      sync_every=sync_every,
  )
  model_flops = flops.model_flops(
      bench.model.flax_model, input_shape, num_classes
  )
  result = {
      'experiment': bench.model.config.experiment_name,
      'input_shape': list(input_shape),
      'num_classes': num_classes,
      'batch_size': batch_size,
      'eval_batch_size': eval_batch_size,
      'devices': bench.devices,
      'model_dtype': bench.model.config.model_dtype_str,
      'attention_type': bench.model.flax_model.attention_type,
      'attention_implementation': bench.model.flax_model.attention_implementation,
      'donate': donate,
      'feed': feed,
      'sync_every': sync_every,
      'steps': steps,
      'windows': windows,
      'warmup': warmup,
      'flops_parts': model_flops['parts'],
  }
  counter = compile_counter.shared()
  for mode in modes:
    entry = {
        'flops_per_sample': model_flops[
            'train' if mode == 'train' else 'forward'
        ]
    }
    if analyse or max_memory_bytes:
      entry.update(step_bench.xla_analysis(bench, mode))
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
        samples_per_s=timing.median(rates),
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
