r"""Model FLOP utilisation of the ViViT-B/16x2 train step on one accelerator.

Times the pmapped train step (train_utils.train_step, donated state, as the trainer runs it)
of ViViT-B/16x2 at 32x224x224x3 in bfloat16, counts its FLOPs with XLA's cost analysis,
and divides the achieved FLOP/s by a bf16 matmul ceiling measured in the same process.

  python -m benchmarks.gpu_vivit_b --variant=factorized_encoder --batch_size=32 --out=/tmp/mfu.json

`--frames/--size/--batch_size` shrink it for a CPU smoke run.
"""

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs.organmnist3d import vivit_keras_baseline
from vivit_flax import model, train_utils
from vivit_flax.datasets import input_pipeline


def vivit_b_config(variant: str, attention_implementation):
  """ViViT-B/16x2 (hidden 768, 12 heads, MLP 3072; Model 2: 12 spatial + 4 temporal layers)."""
  config = vivit_keras_baseline.get_config()
  config.model.update(
      hidden_size=768,
      num_heads=12,
      mlp_dim=3072,
      num_layers=12,
      classifier='gap',
      attention_dropout_rate=0.0,
  )
  config.model.patches.size = (16, 16, 2)
  config.model.patches.drop_remainder = False
  config.model.attention_config.type = variant
  config.model.spatial_transformer = dict(
      num_heads=12, mlp_dim=3072, num_layers=12
  )
  config.model.temporal_transformer = dict(
      num_heads=12, mlp_dim=3072, num_layers=4
  )
  config.model.attention_implementation = attention_implementation
  config.model_dtype_str = 'bfloat16'
  return config


def matmul_ceiling(n: int, dtype, repeats: int = 10) -> float:
  """FLOP/s of an n x n x n matmul, median over `repeats` timed runs."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--variant', default='factorized_encoder')
  parser.add_argument('--attention_implementation', default='cudnn')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--frames', type=int, default=32)
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--windows', type=int, default=3)
  parser.add_argument('--matmul_n', type=int, default=8192)
  parser.add_argument('--out', default=None)
  args = parser.parse_args()

  impl = (
      None
      if args.attention_implementation == 'none'
      else args.attention_implementation
  )
  config = vivit_b_config(args.variant, impl)
  meta = {
      'num_classes': 400,
      'input_shape': (-1, args.frames, args.size, args.size, 3),
      'task': 'multi-class',
      'target_is_onehot': True,
  }
  vivit = model.get_model_cls('vivit_classification')(config, meta)
  lr_fn = train_utils.create_learning_rate_fn(config, 1000)
  state = train_utils.create_train_state(
      vivit.flax_model,
      meta['input_shape'],
      config,
      lr_fn,
      jax.random.PRNGKey(0),
  )
  step = functools.partial(
      train_utils.train_step,
      loss_fn=vivit.loss_function,
      metrics_fn=vivit.get_metrics_fn('train'),
      learning_rate_fn=lr_fn,
  )
  n_dev = jax.local_device_count()
  per_device = args.batch_size // n_dev
  rng = np.random.default_rng(0)
  batch = {
      'inputs': rng.random(
          (n_dev, per_device, args.frames, args.size, args.size, 3), np.float32
      ),
      'label': np.eye(400, dtype=np.float32)[
          rng.integers(0, 400, (n_dev, per_device))
      ],
      'batch_mask': np.ones((n_dev, per_device), np.float32),
  }
  batch = next(input_pipeline.prefetch_to_device(iter([batch]), 1))

  # One compilation serves both XLA's FLOP count (per device) and the timed steps.
  p_step = jax.pmap(step, axis_name=train_utils.AXIS_NAME, donate_argnums=(0,))
  state = train_utils.replicate(state)
  start = time.perf_counter()
  compiled = p_step.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops_per_step_device = float(cost['flops'])
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  windows = []
  for _ in range(args.windows):
    start = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    windows.append((time.perf_counter() - start) / args.steps)
  step_s = statistics.median(windows)
  dtype = jnp.bfloat16 if jax.devices()[0].platform != 'cpu' else jnp.float32
  ceiling = matmul_ceiling(args.matmul_n, dtype) * n_dev
  achieved = flops_per_step_device * n_dev / step_s
  result = {
      'device': jax.devices()[0].device_kind,
      'num_devices': n_dev,
      'jax': jax.__version__,
      'variant': args.variant,
      'attention_implementation': impl,
      'dtype': 'bfloat16',
      'input': [args.frames, args.size, args.size, 3],
      'batch_size': args.batch_size,
      'first_step_s': compile_s,
      'step_s_windows': windows,
      'step_s': step_s,
      'samples_per_s': args.batch_size / step_s,
      'xla_flops_per_sample': flops_per_step_device / per_device,
      'achieved_tflops': achieved / 1e12,
      'matmul_ceiling_tflops': ceiling / 1e12,
      'mfu_vs_measured_matmul': achieved / ceiling,
      'loss': float(train_utils.summarize_metrics([metrics])['loss']),
      'date': time.strftime('%Y-%m-%d'),
  }
  print(json.dumps(result, indent=2), flush=True)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
