#!/usr/bin/env bash
# Fashion-MNIST at 32x32: each family trained under the same wall-clock budget, evaluated on 10,000 samples
# against the 10,000 test images beside the real-vs-real floor.
#
#   IMAGEGEN_DATA_DIR=../shared/datasets scripts/experiments/fashion_mnist_32.sh MINUTES FAMILY [FAMILY ...]
#
# Heavy files (processed data, models, checkpoints) go to $WORK (default outputs/experiments/fashion_mnist_32,
# ignored by git); the small reports (metrics.json, report.md, grid.png, train_log.csv) are copied to
# reports/experiments/fashion_mnist_32/<family>/, with the command in COMMAND.txt. Steps are set high so the
# budget (train.max_minutes), not the step count, ends training; the model is saved where the budget ran out.
set -euo pipefail
minutes=${1:?usage: fashion_mnist_32.sh MINUTES FAMILY [FAMILY ...]}
shift
[ $# -gt 0 ] || { echo "fashion_mnist_32.sh: name at least one family" >&2; exit 2; }
work=${WORK:-outputs/experiments/fashion_mnist_32}
reports=reports/experiments/fashion_mnist_32
data=$work/data
common=(-S tracking.enabled=false -S data.name=fashion_mnist -S data.image_size=32
        -S train.checkpoints_dir="$work/checkpoints" -S train.reports_dir="$work/reports"
        -S evaluate.n_samples=10000 -S evaluate.max_real=10000)
mkdir -p "$work" "$reports"
[ -f "$data/manifest.json" ] || imagegen ingest "${common[@]}" --out "$data"
[ -f "$work/models/features/model.json" ] || imagegen train-features "${common[@]}" --data "$data" --out "$work/models/features"
for family in "$@"; do
  budget=(-S train.max_minutes="$minutes" -S "$family.steps=1000000")
  [ "$family" = ldm ] && budget+=(-S "ldm.vae=$work/models/vae")
  imagegen train "$family" "${common[@]}" "${budget[@]}" --data "$data" --out "$work/models/$family"
  imagegen evaluate "${common[@]}" --model "$work/models/$family" --data "$data" \
    --features "$work/models/features" --out "$work/evaluate_$family"
  mkdir -p "$reports/$family"
  cp "$work/evaluate_$family"/{metrics.json,report.md,grid.png} "$reports/$family/"
  cp "$work/reports/train_$family/train_log.csv" "$reports/$family/"
  echo "IMAGEGEN_DATA_DIR=../shared/datasets scripts/experiments/fashion_mnist_32.sh $minutes $family" \
    > "$reports/$family/COMMAND.txt"
done
