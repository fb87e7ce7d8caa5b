"""ViViT-B/16x2 at Scenic's Kinetics-400 sizes, the paper's model, for the benchmarks.

`--config=vivit_b/<attention type>` of benchmarks.throughput builds `get_config(<attention type>)`, the
config files' convention `get_config(arg)`.
"""

import ml_collections

from configs.organmnist3d import vivit_keras_baseline

VARIANTS = (
    'spacetime',
    'factorized_encoder',
    'factorized_self_attention_block',
    'factorized_dot_product_attention',
)
INPUT = (32, 224, 224, 3)
KINETICS_CLASSES = 400
EXPERIMENT_PREFIX = 'vivit_b16x2'


def get_config(attention_type):
  """ViViT-B/16x2 (Scenic's Kinetics-400 sizes) for one attention variant.

  Derived from the Keras baseline config: hidden 768, 12 heads, MLP 3072, 12 layers (Model 2:
  12 spatial and 4 temporal layers), 16x16x2 tubelets with the central-frame initialiser, no
  dropout; a class token for Models 1 and 2, global average pooling for Models 3 and 4.
  """
  if attention_type not in VARIANTS:
    raise ValueError(
        f'Unknown ViViT-B variant {attention_type!r}; use one of {VARIANTS}.'
    )
  config = vivit_keras_baseline.get_config()
  config.experiment_name = f'{EXPERIMENT_PREFIX}_{attention_type}'
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
