#!/usr/bin/env bash
# Every CPU figure of benchmarks/RESULTS.md, one throughput.py run each, on an otherwise idle
# machine (about 40 minutes on 2 cores). JSON results go to $OUT (default
# benchmarks/results/cpu); each run also prints its Markdown row. Run from anywhere:
#   bash benchmarks/cpu_results.sh [part ...]     (parts: keras levers scaling pipeline models)
set -eu
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/cpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY=${PYTHON:-python}
KERAS_CONFIG=configs/organmnist3d/vivit_keras_baseline.py
bench() {  # bench NAME ARGS...: one throughput.py run, JSON in $OUT/NAME.json
  local name=$1
  shift
  echo "== $name: $*"
  $PY -m benchmarks.throughput --json="$OUT/$name.json" --label="$name" "$@" 2>&1 \
    | grep -E '^\| |^matmul ceiling|ms wall|^ +[0-9.]+ ms ' || echo "$name FAILED"
}
train_only=(--modes=train --noxla_analysis --windows=7)

keras() {  # Ours vs the Keras example (TF and JAX backends), interleaved, median of 5 rounds;
  # then where our train step's time goes (a profile of 10 steps).
  bench keras --config=$KERAS_CONFIG --keras --profile_steps=10
}

levers() {  # Each speed lever switched off alone, against the default (all on).
  bench lever_default --config=$KERAS_CONFIG "${train_only[@]}"
  bench lever_one_cpu_device --config=$KERAS_CONFIG "${train_only[@]}" --cpu_devices=1
  bench lever_no_freed_memory_reuse --config=$KERAS_CONFIG "${train_only[@]}" --nokeep_freed_memory
  bench lever_neither_host_setting --config=$KERAS_CONFIG "${train_only[@]}" --cpu_devices=1 \
    --nokeep_freed_memory
  bench lever_bfloat16 --config=$KERAS_CONFIG "${train_only[@]}" --set=model_dtype_str=bfloat16
  bench lever_no_donation --config=$KERAS_CONFIG "${train_only[@]}" --nodonate
  bench lever_sync_every_step --config=$KERAS_CONFIG "${train_only[@]}" --sync_every=1
  bench lever_feed_prefetch --config=$KERAS_CONFIG "${train_only[@]}" --feed=prefetch
  bench lever_feed_host_arrays --config=$KERAS_CONFIG "${train_only[@]}" --feed=host
}

scaling() {  # 1, 2, 4, 8 CPU devices at 16 examples per device.
  for n in 1 2 4 8; do
    bench "scaling_${n}_devices" --config=$KERAS_CONFIG "${train_only[@]}" --cpu_devices=$n \
      --per_device_batch=16
  done
}

pipeline() {  # The input pipeline alone (synthetic set, the demo's batches) beside the step.
  bench pipeline --config=configs/synthetic/vivit_demo.py --pipeline --noxla_analysis
}

models() {  # vivit_best, and ViViT-B/16x2 on 32x224x224x3 clips for each variant.
  bench vivit_best --config=configs/organmnist3d/vivit_best.py --noxla_analysis
  # One clip per device. Model 1 (1568 tokens attending jointly) needs over 24 GiB at two clips,
  # so it runs on one device.
  bench vivit_b_spacetime --config=vivit_b/spacetime --cpu_devices=1 --batch_size=1 --steps=1 \
    --windows=2 --warmup=1 --noxla_analysis
  for variant in factorized_encoder factorized_self_attention_block \
      factorized_dot_product_attention; do
    bench "vivit_b_$variant" --config="vivit_b/$variant" --batch_size=2 --steps=1 --windows=2 \
      --warmup=1 --noxla_analysis
  done
}

for part in ${*:-keras levers scaling pipeline models}; do
  "$part"
done
