#!/usr/bin/env bash
# Step 2 of scripts/device/README.md, ON THE GPU HOST, from the root of the copied checkout (with .whl/ and
# .devdata/ from scripts/device/prepare.sh beside it; no network needed):
#   OUT=/path/for/results bash scripts/device/train_ddpm_fashion.sh [MINUTES]
# JAX backend, Fashion-MNIST at 32x32: ingest, measure training throughput at batch 128 and 512, train a DDPM
# for MINUTES (default 8.5; the run ends with a checkpoint, and running the script again continues it with
# --resume), then sample DDIM-100 grids. Everything it reports lands in $OUT (default /tmp/out):
#   gpu.txt, ingest.txt, bench_gpu.jsonl, train.txt   what each step printed
#   train_log.csv, metrics.json, model.json           the training curve and summary
#   ddim100/grid.png                                  samples
#   model/                                            the trained model folder (loads under any Keras backend)
set -euo pipefail
MINUTES=${1:-8.5}
source scripts/device/fashion_ddpm.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
COMMON=("${FASHION_DDPM[@]}" -S train.sample_every=5000)
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m imagegen ingest "${COMMON[@]}" | tee "$OUT/ingest.txt"
python3 bench/train_throughput.py --family ddpm --batch-sizes 128 512 --image-size 32 --steps 50 --warmup 3 \
  "${COMMON[@]}" 2>/dev/null | grep '^{' | tee "$OUT/bench_gpu.jsonl"
python3 -m imagegen train ddpm "${COMMON[@]}" -S "train.max_minutes=$MINUTES" --resume 2>&1 | tail -5 | tee "$OUT/train.txt"
cp reports/train_ddpm/train_log.csv reports/train_ddpm/metrics.json models/ddpm/model.json "$OUT/"
python3 -m imagegen sample --model models/ddpm --steps 100 --n 64 --seed 3 --out "$OUT/ddim100" "${COMMON[@]}"
rm -f "$OUT/ddim100/samples.npz"
rm -rf "$OUT/model" && cp -r models/ddpm "$OUT/model"
ls -la "$OUT"
