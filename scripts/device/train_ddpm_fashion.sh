#!/usr/bin/env bash
# Run ON THE GPU BOX through the device tool, with carry [".whl", ".devdata"] (after scripts/device/prepare.sh):
#   bash scripts/device/train_ddpm_fashion.sh [MINUTES]
# JAX backend, Fashion-MNIST at 32x32: ingest, throughput at batch 128 and 512, train the DDPM for MINUTES
# (default 8.5) with a checkpoint at the end, then DDIM-100 sample grids. Results go to $OUT; weights larger
# than the tool's 16 MB per-file limit come back split (reassemble with `cat x.part-* > x`).
# Written without a GPU at hand (none was lent to the session that wrote it): check its first run closely.
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
for f in models/ddpm/unet_ema.weights.h5; do split -b 15M "$f" "$OUT/$(basename "$f").part-"; done
ls -la "$OUT"
