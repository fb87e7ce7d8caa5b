#!/usr/bin/env bash
# One-shot GPU check (about 3 minutes on one H100): ViViT-B/16x2 Model 2 (factorised encoder,
# 32x224x224x3 clips) train step in bfloat16 at a batch that fills the card, its model FLOP
# utilisation against a bfloat16 matmul ceiling measured in the same process (target >= 40%),
# and the Keras configuration's train step. Results go to $OUT (one JSON per part and the
# summary $OUT/gpu_check.json) and are printed as they come.
#
# The device image has JAX with CUDA, Flax and Optax but not ml_collections: it is installed from
# the carried wheel in .whl/. Run from the repository root:
#   bash benchmarks/gpu_check.sh            (device tool: carry ['.whl'])
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
PY=${PYTHON:-python3}
START=$(date +%s)
log() { echo "[gpu_check +$(($(date +%s) - START))s] $*"; }

log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv \
  2>&1 | tee "$OUT/nvidia_smi.txt"
if ! $PY -c 'import ml_collections' 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/ml_collections-*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
timeout 60 $PY -c 'import jax, flax, optax, ml_collections
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())' \
  2>&1 | tee "$OUT/versions.txt" || log "versions: failed"

# Part 1: ViViT-B/16x2 Model 2, bfloat16, cuDNN attention where cuDNN takes the shape, at
# batch 32 (about 1.5 GB of activations per clip: most of the card), else 16 if that fails.
vivit_b() {
  timeout "$2" $PY -m benchmarks.throughput --config=vivit_b/factorized_encoder \
    --set=model_dtype_str=bfloat16 --set=model.attention_implementation=cudnn \
    --batch_size="$1" --modes=train --steps=5 --windows=3 --warmup=2 --noxla_analysis \
    --label="gpu_check vivit_b fe bf16 batch $1" --json="$OUT/vivit_b_fe_bf16.json" 2>&1 \
    | grep -v -e '^W0000' -e 'Unable to initialize backend' | tee "$OUT/vivit_b_fe_bf16.log"
  return "${PIPESTATUS[0]}"
}
log "part 1: ViViT-B/16x2 Model 2 bf16 train step"
vivit_b 32 110 || vivit_b 16 70 || log "part 1: failed"

# Part 2: the Keras example's configuration (float32, batch 32), train and eval steps.
log "part 2: Keras configuration train/eval steps"
timeout 50 $PY -m benchmarks.throughput --config=configs/organmnist3d/vivit_keras_baseline.py \
  --steps=20 --windows=5 --warmup=2 --label='gpu_check keras config' \
  --json="$OUT/keras_config.json" 2>&1 | grep -v -e '^W0000' -e 'Unable to initialize backend' \
  | tee "$OUT/keras_config.log" || log "part 2: failed"

log "summary"
$PY - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
summary = {}
for path in sorted(glob.glob(os.path.join(out, '*.json'))):
  if path.endswith('gpu_check.json'):
    continue
  with open(path) as f:
    run = json.load(f)
  for result in run['results']:
    train = result.get('train', {})
    summary[os.path.basename(path)[:-5]] = {
        'device': run['machine']['device_kind'], 'batch_size': result['batch_size'],
        'model_dtype': result['model_dtype'],
        'train_samples_per_s': train.get('samples_per_s'),
        'eval_samples_per_s': result.get('eval', {}).get('samples_per_s'),
        'train_tflop_per_sample': (train.get('flops_per_sample') or 0) / 1e12,
        'train_tflops': (train.get('flops_per_s') or 0) / 1e12,
        'ceiling_tflops': (train.get('ceiling', {}).get('flops_per_s') or 0) / 1e12,
        'mfu': train.get('fraction_of_ceiling'),
        'compiles_in_windows': train.get('compiles_in_windows')}
with open(os.path.join(out, 'gpu_check.json'), 'w') as f:
  json.dump(summary, f, indent=2)
print(json.dumps(summary, indent=2))
EOF
log "done"
