"""Tests for benchmarks.throughput's modules (FLOP formula against XLA's cost analysis, the timing
core, the profile, config specs) and for the speed rewrites it measures (patch embedding as a
matrix product, dropout masks).
"""

import json

import jax
import ml_collections
import pytest

from benchmarks import config_specs
from benchmarks import flops
from benchmarks import matmul_ceiling
from benchmarks import measure
from benchmarks import step_bench
from benchmarks import step_profile
from benchmarks import throughput_report
from benchmarks import vivit_b
from vivit_flax import model

INPUT = (8, 16, 16, 3)  # T, H, W, C: 4x4x4 tubelets of 2x4x4 -> 64 tokens.
NUM_CLASSES = 10


def tiny_config(attention_type):
  """A one-layer ViViT of width 128 (matrix products dominate its FLOPs, as in real models)."""
  config = vivit_b.get_config(attention_type)
  m = config.model
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 128, 2, 512, 1
  m.spatial_transformer = ml_collections.ConfigDict(
      dict(num_heads=2, mlp_dim=512, num_layers=1)
  )
  m.temporal_transformer = ml_collections.ConfigDict(
      dict(num_heads=2, mlp_dim=512, num_layers=1)
  )
  m.patches.size = (4, 4, 2)
  return config


@pytest.mark.parametrize('attention_type', vivit_b.VARIANTS)
def test_flop_formula_matches_xla_cost_analysis(attention_type):
  batch = (
      8 * jax.local_device_count()
  )  # Enough examples that the optimizer's work is small.
  bench = step_bench.StepBench(
      tiny_config(attention_type), INPUT, NUM_CLASSES, batch, batch
  )
  model_flops = flops.model_flops(bench.model.flax_model, INPUT, NUM_CLASSES)
  for mode, formula in (
      ('eval', model_flops['forward']),
      ('train', model_flops['train']),
  ):
    xla = step_bench.xla_analysis(bench, mode)['xla_flops_per_sample']
    # XLA also counts element-wise work (LayerNorm, softmax, GELU, optimizer): a few % more.
    assert formula <= xla <= 1.05 * formula, (mode, formula, xla)


def test_vivit_b_flops_match_the_vivit_paper():
  """Forward multiply-adds of ViViT-B/16x2 on 32x224x224 clips against Table 2 of Arnab et
  al. (2021): 455.2, 284.4, 372.3 and 277.1 GFLOPs (counted as multiply-adds) for Models 1-4.
  """
  paper = dict(zip(vivit_b.VARIANTS, (455.2e9, 284.4e9, 372.3e9, 277.1e9)))
  for variant, expected in paper.items():
    config = vivit_b.get_config(variant)
    vivit = model.ViViTClassificationModel(config, {'num_classes': 400})
    macs = (
        flops.model_flops(vivit.flax_model, vivit_b.INPUT, 400)['forward'] / 2
    )
    assert macs == pytest.approx(expected, rel=0.01), variant


def test_measure_runs_a_tiny_config():
  devices = jax.local_device_count()
  config = tiny_config('spacetime')
  config.model.attention_dropout_rate = 0.1  # Exercise the dropout path too.
  result = measure.measure(
      config,
      input_shape=INPUT,
      num_classes=NUM_CLASSES,
      batch_size=devices,
      steps=2,
      windows=2,
      warmup=2,
      feed='prefetch',
      sync_every=1,
      ceiling=matmul_ceiling.MatmulCeiling(size=128),
  )
  for mode in ('train', 'eval'):
    entry = result[mode]
    assert entry['samples_per_s'] > 0 and len(entry['samples_per_s_all']) == 2
    assert entry['compiles_in_windows'] == 0
    assert 0 < entry['fraction_of_ceiling']
  assert result['batch_sharding_matches_step']
  result['name'] = 'tiny'
  assert throughput_report.markdown_row(result).startswith(
      '| tiny | float32 | 8 |'
  )
  json.dumps(result)


def test_profile_train_step_accounts_for_the_step(tmp_path):
  devices = jax.local_device_count()
  config = tiny_config('spacetime')
  config.model.attention_dropout_rate = 0.1
  bench = step_bench.StepBench(
      config, INPUT, NUM_CLASSES, 2 * devices, 2 * devices
  )
  profile = step_profile.profile_train_step(bench, 2, str(tmp_path))
  per_kind = profile['ms_per_step_and_device']
  assert set(per_kind) == set(step_profile.PROFILE_KINDS)
  for kind in (
      'matrix products',
      'random bits for dropout',
      'optimizer update, loss and metrics',
      'other model work (element-wise, reductions)',
  ):
    assert per_kind[kind] > 0, kind
  assert min(per_kind.values()) >= 0
  # Eight devices share the two cores, so no device has spare threads to overlap its own
  # instructions: per device they fit in the traced wall time (0.58-0.69 of it, measured).
  assert sum(per_kind.values()) <= 1.05 * profile['wall_ms_per_step']
  json.dumps(profile)


def test_load_config_applies_overrides(tmp_path):
  config = config_specs.load_config(
      'configs/organmnist3d/vivit_keras_baseline.py',
      [
          'model_dtype_str=bfloat16',
          'model.patches.size=(7, 7, 7)',
          'model.attention_implementation=xla',
      ],
  )
  assert config.model_dtype_str == 'bfloat16'
  assert tuple(config.model.patches.size) == (7, 7, 7)
  assert config.model.attention_implementation == 'xla'
  assert config_specs.input_spec(config) == ((28, 28, 28, 1), 11)


def test_load_config_passes_the_argument_after_the_colon():
  config = config_specs.load_config(
      'configs/medmnist3d/vivit_recipe.py:adrenalmnist3d,64'
  )
  assert config.dataset_configs.name == 'adrenalmnist3d'
  assert config_specs.input_spec(config) == ((64, 64, 64, 1), 2)
