"""Throughput of the Keras "Video Vision Transformer" example, the baseline our Flax port is compared to.

The model rebuilds, as a Keras 3 model, the keras.io example "Video Vision Transformer"
(keras.io/examples/vision/vivit, Aritra Roy Gosthipaty and Ayush Thakur) for OrganMNIST3D:
tubelet embedding (Conv3D, 8x8x8 kernel and stride, VALID -> 27 tokens of width 128), learned
positional embedding, 8 pre-norm transformer layers (8 heads, attention dropout 0.1, MLP 512 -> 128
with GELU after both dense layers), final LayerNorm, global average pooling and a softmax over
11 classes; compiled with Adam(1e-4), sparse categorical cross-entropy, accuracy and top-5 accuracy.

Training throughput is timed on the model's own `fit` loop (one epoch of `num_batches` batches per
timed window, after `warmup` untimed windows that include compilation); evaluation throughput on
`evaluate` and `predict`. Inputs are random uint8 voxels scaled to [0, 1], as the example feeds them.
Each figure is the median over `repeats` windows, in samples per second; all windows are kept.
Thread settings and `compile(jit_compile="auto")` are left at each backend's defaults and recorded
in the result. On a CPU-only machine "auto" means XLA on the JAX backend but none on TensorFlow
(Keras turns XLA off there): the TensorFlow backend runs graph functions of TensorFlow's own
(oneDNN) kernels.

Run one backend per process (KERAS_BACKEND must be set before Keras is imported):

    python benchmarks/keras_reference.py --backend tensorflow --num_batches 10 --repeats 3
    python benchmarks/keras_reference.py --backend jax --json /tmp/keras_jax.json

From Python, `run_reference(backend, batch_size, num_batches, repeats)` runs this script in a
subprocess and returns its result dict.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

BACKENDS = ("tensorflow", "jax")
INPUT_SHAPE = (28, 28, 28, 1)
NUM_CLASSES = 11
PATCH_SIZE = 8
EMBED_DIM = 128
NUM_HEADS = 8
NUM_LAYERS = 8
MLP_DIM = EMBED_DIM * 4
LAYER_NORM_EPS = 1e-6
ATTENTION_DROPOUT = 0.1
LEARNING_RATE = 1e-4
SEED = 42
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "XLA_FLAGS",
    "TF_ENABLE_ONEDNN_OPTS",
)


def build_model(keras):
  """Returns the compiled Keras ViViT classifier of the keras.io example."""
  layers = keras.layers

  class TubeletEmbedding(layers.Layer):
    """Non-overlapping 3D patches projected to tokens: [B, T, H, W, C] -> [B, tokens, EMBED_DIM]."""

    def __init__(self, **kwargs):
      super().__init__(**kwargs)
      self.projection = layers.Conv3D(
          EMBED_DIM, PATCH_SIZE, strides=PATCH_SIZE, padding="valid"
      )
      self.flatten = layers.Reshape((-1, EMBED_DIM))

    def call(self, videos):
      return self.flatten(self.projection(videos))

  class PositionalEncoder(layers.Layer):
    """Adds a learned embedding of each token's index."""

    def build(self, input_shape):
      self.num_tokens = input_shape[1]
      self.position_embedding = layers.Embedding(
          self.num_tokens, input_shape[2]
      )

    def call(self, tokens):
      return tokens + self.position_embedding(keras.ops.arange(self.num_tokens))

  inputs = keras.Input(shape=INPUT_SHAPE)
  tokens = PositionalEncoder()(TubeletEmbedding()(inputs))
  for _ in range(NUM_LAYERS):
    normed = layers.LayerNormalization(epsilon=LAYER_NORM_EPS)(tokens)
    attended = layers.MultiHeadAttention(
        num_heads=NUM_HEADS,
        key_dim=EMBED_DIM // NUM_HEADS,
        dropout=ATTENTION_DROPOUT,
    )(normed, normed)
    tokens = layers.Add()([attended, tokens])
    normed = layers.LayerNormalization(epsilon=LAYER_NORM_EPS)(tokens)
    mlp_out = keras.Sequential(
        [
            layers.Dense(MLP_DIM, activation="gelu"),
            layers.Dense(EMBED_DIM, activation="gelu"),
        ]
    )(normed)
    tokens = layers.Add()([mlp_out, tokens])
  representation = layers.GlobalAveragePooling1D()(
      layers.LayerNormalization(epsilon=LAYER_NORM_EPS)(tokens)
  )
  outputs = layers.Dense(NUM_CLASSES, activation="softmax")(representation)

  model = keras.Model(inputs, outputs)
  model.compile(
      optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE),
      loss=keras.losses.SparseCategoricalCrossentropy(),
      metrics=[
          keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
          keras.metrics.SparseTopKCategoricalAccuracy(5, name="top-5-accuracy"),
      ],
  )
  return model


def _thread_settings(backend):
  """Returns the thread-related settings in effect (all defaults unless the caller's env sets them)."""
  settings = {
      "os_cpu_count": os.cpu_count(),
      "usable_cpus": len(os.sched_getaffinity(0)),
      "env": {name: os.environ.get(name) for name in THREAD_ENV_VARS},
  }
  if backend == "tensorflow":
    import tensorflow as tf

    # 0 means "let the runtime choose" (one intra-op thread per usable core).
    settings["tf_intra_op_parallelism_threads"] = (
        tf.config.threading.get_intra_op_parallelism_threads()
    )
    settings["tf_inter_op_parallelism_threads"] = (
        tf.config.threading.get_inter_op_parallelism_threads()
    )
  return settings


def _backend_info(backend):
  """Returns the backend library version and the devices it computes on."""
  if backend == "tensorflow":
    import tensorflow as tf

    return tf.__version__, [d.name for d in tf.config.list_logical_devices()]
  import jax

  return jax.__version__, [str(d) for d in jax.devices()]


def _samples_per_s(run, num_samples, repeats):
  """Times `run()` `repeats` times; returns every window's samples/s."""
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    rates.append(num_samples / (time.perf_counter() - start))
  return rates


def measure(backend, batch_size=32, num_batches=10, repeats=5, warmup=1):
  """Builds the Keras model on `backend` in this process and times fit, evaluate and predict.

  Must run in a process that has not imported Keras with another backend.
  """
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
  if (
      "keras" in sys.modules
      and sys.modules["keras"].backend.backend() != backend
  ):
    raise RuntimeError(
        f"Keras is already imported with backend {sys.modules['keras'].backend.backend()!r}"
    )
  os.environ["KERAS_BACKEND"] = backend
  import keras  # Imported here: KERAS_BACKEND is only read when Keras is first imported.

  keras.utils.set_random_seed(SEED)
  num_samples = batch_size * num_batches
  rng = np.random.default_rng(SEED)
  videos = (
      rng.integers(
          0, 256, size=(num_samples, *INPUT_SHAPE), dtype=np.uint8
      ).astype(np.float32)
      / 255.0
  )
  labels = rng.integers(0, NUM_CLASSES, size=num_samples).astype(np.int32)

  model = build_model(keras)

  def fit():
    model.fit(videos, labels, batch_size=batch_size, epochs=1, verbose=0)

  def evaluate():
    model.evaluate(videos, labels, batch_size=batch_size, verbose=0)

  def predict():
    model.predict(videos, batch_size=batch_size, verbose=0)

  start = time.perf_counter()
  for _ in range(warmup):
    fit()
  warmup_fit_s = time.perf_counter() - start
  train = _samples_per_s(fit, num_samples, repeats)
  for _ in range(warmup):
    evaluate()
    predict()
  evaluation = _samples_per_s(evaluate, num_samples, repeats)
  prediction = _samples_per_s(predict, num_samples, repeats)

  backend_version, devices = _backend_info(backend)
  return {
      "framework": "keras",
      "backend": backend,
      "keras_version": keras.__version__,
      "backend_version": backend_version,
      "devices": devices,
      "threads": _thread_settings(backend),
      "param_count": model.count_params(),
      "jit_compile": model.jit_compile,
      "batch_size": batch_size,
      "num_batches": num_batches,
      "repeats": repeats,
      "warmup": warmup,
      "warmup_fit_s": warmup_fit_s,
      "train_samples_per_s": statistics.median(train),
      "train_samples_per_s_all": train,
      "eval_samples_per_s": statistics.median(evaluation),
      "eval_samples_per_s_all": evaluation,
      "predict_samples_per_s": statistics.median(prediction),
      "predict_samples_per_s_all": prediction,
  }


def run_reference(backend, batch_size=32, num_batches=10, repeats=5, warmup=1):
  """Runs `measure` for `backend` in a fresh Python subprocess and returns its result dict.

  The subprocess inherits this process's environment (so thread settings stay at their defaults
  unless the caller set them) and its stderr; a failing run raises subprocess.CalledProcessError.
  """
  with tempfile.TemporaryDirectory() as tmp:
    json_path = os.path.join(tmp, "result.json")
    subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--backend",
            backend,
            "--batch_size",
            str(batch_size),
            "--num_batches",
            str(num_batches),
            "--repeats",
            str(repeats),
            "--warmup",
            str(warmup),
            "--json",
            json_path,
        ],
        env={**os.environ, "KERAS_BACKEND": backend},
        stdout=subprocess.DEVNULL,
        check=True,
    )
    with open(json_path) as f:
      return json.load(f)


def main(argv=None):
  """Command line: measures one backend and writes or prints the result as JSON."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--backend", choices=BACKENDS, required=True)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument(
      "--num_batches", type=int, default=10, help="batches per timed window"
  )
  parser.add_argument(
      "--repeats",
      type=int,
      default=5,
      help="timed windows; the median is reported",
  )
  parser.add_argument(
      "--warmup",
      type=int,
      default=1,
      help="untimed windows before timing (compilation)",
  )
  parser.add_argument(
      "--json",
      help="write the result here instead of printing it as one JSON line",
  )
  args = parser.parse_args(argv)

  result = measure(
      args.backend, args.batch_size, args.num_batches, args.repeats, args.warmup
  )
  print(
      f"keras[{args.backend}] params={result['param_count']:,} "
      f"train={result['train_samples_per_s']:.1f} eval={result['eval_samples_per_s']:.1f} "
      f"predict={result['predict_samples_per_s']:.1f} samples/s",
      file=sys.stderr,
  )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  else:
    print(json.dumps(result))


if __name__ == "__main__":
  main()
