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
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD/src:/tmp/site KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
COMMON=(-S tracking.enabled=false -S data.name=fashion_mnist -S data.image_size=32 -S data.path=.devdata/fashion_mnist
        -S data.download=false -S ddpm.base_channels=64 -S "ddpm.channel_mults=[1,2,2]" -S ddpm.num_res_blocks=2
        -S "ddpm.attention_resolutions=[16]" -S ddpm.learning_rate=0.0002 -S ddpm.ema_decay=0.9995 -S ddpm.steps=200000
        -S train.batch_size=128 -S train.log_every=100 -S train.checkpoint_every=2000 -S train.sample_every=5000
        -S sample.steps=100)
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
