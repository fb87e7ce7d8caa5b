#!/usr/bin/env bash
# The ablation table of benchmarks/RESULTS.md ("Ablations"): from the shipped recipe, each lever
# switched off (or, for a lever the recipe leaves out, on) alone, seeds 0 and 1 trained two at a
# time, one core each; each prints its validation summary (the test split is not read). Run from anywhere:
#   bash benchmarks/recipe_ablations.sh [name ...]      (default: every row; ROOT=/tmp/acc, or /tmp/acc_cv5)
# FOLDS=5 cross-validates each row instead (train + validation pooled, 5 folds x 2 seeds: what
# issue 21 asks of the final recipe's levers); compare a row fold by fold with the recipe's folds:
#   python -m benchmarks.compare_folds --reference=benchmarks/results/cv/recipe_six_blocks_seeds01.json \
#       --row=$ROOT/abl_<name>/summary.json
# SEEDS=0 (then SEEDS=1, e.g. on another machine) trains a row in parts; give compare_folds
# both parts' summaries: --row=part_seed0.json,part_seed1.json
set -eu
cd "$(dirname "$0")/.."
ROOT=${ROOT:-/tmp/acc${FOLDS:+_cv$FOLDS}}
PY=${PYTHON:-python}
SEEDS=${SEEDS:-0,1}
RECIPE=configs/medmnist3d/vivit_recipe.py:adrenalmnist3d
declare -A SET=(
  [recipe]=''
  [no_stem]='model.stem.features=() model.stem.strides=()'
  [gap]='model.classifier=gap'  # the mean over tokens instead of MAP pooling
  [no_shifts]='dataset_configs.augmentation.max_shift=0'
  [wider_shifts]='dataset_configs.augmentation.max_shift=4'  # up to 4 voxels rather than 2 (28^3)
  [rotations]='dataset_configs.augmentation.max_rotation=15'  # tilts of up to 15 degrees per plane
  [no_label_smoothing]='label_smoothing=0.0'
  [no_weight_decay]='optimizer_configs.weight_decay=0.0'
  [no_clipping]='max_grad_norm=1e9'  # a threshold never reached
  [constant_lr]='lr_configs.factors=constant'
  [forty_epochs]='num_training_epochs=40'  # the schedule before 35c3ed3
  [stochastic_depth]='model.stochastic_droplayer_rate=0.1'
  [sincos_positions]='model.positional_embedding=sinusoidal_3d'  # fixed 3D sin-cos, not learned
  [flips]='dataset_configs.augmentation.flip_axes=(0,1,2)'
  [mixup]='dataset_configs.augmentation.mixup_alpha=0.2'
  [factorized_encoder]='model.attention_config.type=factorized_encoder'
  [factorized_self_attention]='model.attention_config.type=factorized_self_attention_block'
  [factorized_dot_product]='model.attention_config.type=factorized_dot_product_attention'
  [cutmix]='dataset_configs.augmentation.cutmix_alpha=1.0'
  [narrow]='model.hidden_size=64 model.mlp_dim=128'  # half the width (twice the width: 3-4x the time)
  [four_blocks]='model.num_layers=4'  # the encoder of the recipe before 489c55e
  [eight_blocks]='model.num_layers=8'  # capacity beyond the recipe's six
  [masked_pretraining]=''  # CONFIG's: the recipe fine-tuned from its own masked pretraining
)
# Rows that train another config than the recipe (with SET's overrides on top).
declare -A CONFIG=(
  # Pretrains first (vivit_mae_pretrain.py's settings) on the fold's training volumes only.
  [masked_pretraining]=configs/medmnist3d/vivit_mae_finetune.py:adrenalmnist3d
)
ORDER=(no_stem gap no_shifts wider_shifts rotations no_label_smoothing no_weight_decay no_clipping constant_lr forty_epochs stochastic_depth sincos_positions flips mixup cutmix factorized_encoder
       factorized_self_attention factorized_dot_product narrow four_blocks eight_blocks masked_pretraining recipe)
for name in "${@:-${ORDER[@]}}"; do
  sets=()
  for override in ${SET[$name]}; do sets+=("--set=$override"); done
  echo "== $name: ${CONFIG[$name]:-} ${SET[$name]}"
  $PY -m benchmarks.accuracy --config="${CONFIG[$name]:-$RECIPE}" --workdir="$ROOT/abl_$name" --seeds=$SEEDS --jobs=2 \
    --splits=validation ${FOLDS:+--folds=$FOLDS} \
    "${sets[@]}" || echo "== $name FAILED"
done
