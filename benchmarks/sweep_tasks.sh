#!/usr/bin/env bash
# The sweep of configs/organmnist3d/sweep_lr_variant.py (12 points) run as a cluster runs it, on
# this machine: --list, one `--point=K` process per point (two at a time, as a job array with two
# slots), --collect and --select; then the same points as a local --parallel=2 sweep, whose table
# must equal the tasks' table byte for byte; then the selected point's main.py command rerun in a
# fresh workdir, whose validation and test scores must equal the point's. The data is the
# project's synthetic set (dataset_name=synthetic3d, set explicitly), so the scores say nothing
# about MedMNIST: this checks the sweep machinery. Run from anywhere:
#   bash benchmarks/sweep_tasks.sh        (OUT=/tmp/sweep_tasks STEPS=20)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sweep_tasks}
STEPS=${STEPS:-20}
PY=${PYTHON:-python}
CONFIG=configs/organmnist3d/sweep_lr_variant.py
SET=(--config.dataset_name=synthetic3d "--config.dataset_configs.data_dir=$OUT/data"
     "--config.num_training_steps=$STEPS")
sweep() { "$PY" -m vivit_flax.sweep "--config=$CONFIG" "$@" "${SET[@]}"; }
seconds() { echo $(( $(date +%s) - $1 )); }

rm -rf "$OUT" && mkdir -p "$OUT"
"$PY" -m vivit_flax.datasets.synthetic --out "$OUT/data"
sweep --workdir="$OUT/tasks" --list | tee "$OUT/list.txt"
N=$(head -1 "$OUT/list.txt")

start=$(date +%s)
seq 0 $((N - 1)) | xargs -P 2 -I{} sh -c "$PY -m vivit_flax.sweep --config=$CONFIG \
  --workdir=$OUT/tasks --point={} ${SET[*]} > $OUT/task_{}.log 2>&1"
echo "== $N --point tasks, two at a time: $(seconds "$start") s"
sweep --workdir="$OUT/tasks" --collect
sweep --workdir="$OUT/tasks" --select=validation.auc | tee "$OUT/select.txt"

start=$(date +%s)
sweep --workdir="$OUT/local" --parallel=2 > "$OUT/local.log" 2>&1
echo "== local --parallel=2 sweep: $(seconds "$start") s"
cmp "$OUT/tasks/results.csv" "$OUT/local/results.csv" && cmp "$OUT/tasks/results.md" "$OUT/local/results.md"
echo '== the tasks table equals the local sweep table'

best=$(sed -n 's/^Best of .*: //p' "$OUT/select.txt")
rerun=$(tail -1 "$OUT/select.txt" | sed "s|--workdir=[^ ]*|--workdir=$OUT/rerun|")
start=$(date +%s)
eval "$rerun" > "$OUT/rerun.log" 2>&1
echo "== the selected command, rerun in $OUT/rerun: $(seconds "$start") s"
"$PY" - "$OUT/tasks/$best/results.json" "$OUT/rerun/results.json" <<'EOF'
import json, sys
point, rerun = (json.load(open(path)) for path in sys.argv[1:])
for split in ('validation', 'test'):
  assert point[split] == rerun[split], (split, point[split], rerun[split])
print('== the rerun reproduces the selected row:', {k: point['validation'][k] for k in ('auc', 'accuracy')})
EOF
