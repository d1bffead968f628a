#!/usr/bin/env bash
# Caption conditioning on Fashion-MNIST: a caption DDPM trained on "a photo of a {class}" captions at the
# default 16x16 and defaults otherwise, then asked for each class's caption; the pipeline's feature classifier
# says which share of each prompt's images show the prompted class (and how often it is right on real images
# of that class, the ceiling).
#
#   IMAGEGEN_DATA_DIR=../shared/datasets scripts/experiments/fashion_mnist_prompts.sh VARIANT [-S key=value ...]
#
# VARIANT names the run (e.g. "defaults"); the -S overrides go to the training (e.g. -S ddpm.caption_dropout=0.2).
# Heavy files go to $WORK (default outputs/experiments/fashion_mnist_prompts, ignored by git); metrics.json,
# report.md, grid.png and train_log.csv go to reports/experiments/fashion_mnist_prompts/VARIANT/ with the
# command in COMMAND.txt.
set -euo pipefail
variant=${1:?usage: fashion_mnist_prompts.sh VARIANT [-S key=value ...]}
shift
work=${WORK:-outputs/experiments/fashion_mnist_prompts}
reports=reports/experiments/fashion_mnist_prompts/$variant
data=$work/data
common=(-S tracking.enabled=false -S data.name=fashion_mnist -S "data.caption_template=a photo of a {class}"
        -S train.checkpoints_dir="$work/checkpoints/$variant" -S train.reports_dir="$work/reports/$variant")
mkdir -p "$work" "$reports"
[ -f "$data/manifest.json" ] || imagegen ingest "${common[@]}" --out "$data"
[ -f "$work/models/features/model.json" ] || imagegen train-features "${common[@]}" --data "$data" --out "$work/models/features"
imagegen train ddpm "${common[@]}" -S ddpm.captions=true "$@" --data "$data" --out "$work/models/$variant"
imagegen evaluate "${common[@]}" --model "$work/models/$variant" --data "$data" \
  --features "$work/models/features" --out "$work/evaluate_$variant"
cp "$work/evaluate_$variant"/{metrics.json,report.md,grid.png} "$reports/"
cp "$work/reports/$variant/train_ddpm/train_log.csv" "$reports/"
echo "IMAGEGEN_DATA_DIR=../shared/datasets scripts/experiments/fashion_mnist_prompts.sh $variant $*" > "$reports/COMMAND.txt"
