"""Our train step against the Keras example's (benchmarks.keras_reference), on the same machine."""

from benchmarks import keras_reference, timing


def compare(bench, rounds, num_batches):
  """Interleaved rounds of (our train window, Keras TF fit window, Keras JAX fit window), each
  of `num_batches` batches of the bench's global batch; medians and ratios of samples/s.
  """
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
      'ours_samples_per_s': timing.median(ours),
      'ours_all': ours,
  }
  for backend, rates in theirs.items():
    result[backend] = {
        'samples_per_s': timing.median(rates),
        'all': rates,
        'ratio': timing.median(ours) / timing.median(rates),
        'jit_compile': jit_compile[backend],
    }
  return result
