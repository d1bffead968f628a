#!/usr/bin/env bash
# The teacher-student run on one NVIDIA GPU, ON THE GPU HOST, from the root of the copied checkout (with .whl/
# and .devdata/ from scripts/device/prepare.sh beside it; no network needed):
#   OUT=/path/for/results bash scripts/device/teacher_student_fashion.sh
# On an H200, train, distill and sample took 598 s with TRAIN_MINUTES=3 and DISTILL_SECONDS=80 (teacher 211 s,
# distillation 223 s, the three 10,000-image draws 152 s): where one call may last 10 minutes, run them in one
# call and the benchmark in a second, e.g. PHASES="train distill sample" then PHASES="speed compare".
# DISTILL_SECONDS counts training steps only: the command adds about three minutes of per-round measurements
# and compilation there.
# Models, reports and grids go to outputs/teacher_student/ (git-ignored, kept between calls on the same host).
# JAX backend, bf16, Fashion-MNIST at 32x32, one phase each (PHASES, default all five, in this order):
#   1. train: ingest, then train the DDPM teacher for TRAIN_MINUTES (default 3);
#   2. distill: distill it progressively from 64 DDIM steps to 4 (four rounds), with as many steps per round as
#      DISTILL_SECONDS (default 80) allow at the teacher's measured pace;
#   3. sample: draw EVAL_N (default 10000) images each: teacher DDIM-100, teacher DDIM-4 (undistilled), the
#      4-step student;
#   4. speed: time the student's and the teacher's sampling at 4 steps (bench/sample_speed.py);
#   5. compare: the trainer against the PyTorch reference (bench/compare_reference.py --device cuda), in
#      whatever time is left before BUDGET_SECONDS (default 570) since the start.
# The .npz files are evaluated elsewhere (`imagegen evaluate --samples`, see scripts/device/README.md).
# Everything lands in $OUT (default /tmp/out), at most 8 files:
#   run.log                      every step's command, output, exit status and seconds
#   teacher_ddim100.npz, teacher_ddim4.npz, student_ddim4.npz   uint8 images (EVAL_N, 32, 32, 1)
#   sample_speed.jsonl           sampling images/s (bench/sample_speed.py)
#   compare_reference_gpu.json   training images/s, FLOPs/image, ours against diffusers' UNet2DModel
#   reports.tar                  loss curve, training and distillation metrics, model.json files, sample grids
set -uo pipefail
T0=$(date +%s)
TRAIN_MINUTES=${TRAIN_MINUTES:-3}
DISTILL_SECONDS=${DISTILL_SECONDS:-80}
EVAL_N=${EVAL_N:-10000}
BUDGET_SECONDS=${BUDGET_SECONDS:-570}
PHASES=" ${PHASES:-train distill sample speed compare} "
RUN=outputs/teacher_student
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG="$OUT/run.log"
source scripts/device/fashion_ddpm.sh
IMAGEGEN=(python3 -m imagegen)
COMMON=("${FASHION_DDPM[@]}" -S train.sample_every=100000 -S train.mixed_precision=bf16
        -S "train.models_dir=$RUN/models" -S "train.reports_dir=$RUN/reports" ${EXTRA_PARAMS:-})
phase() { [[ "$PHASES" == *" $1 "* ]]; }

run() {  # run NAME CMD...: the command's output into the log, with its exit status and seconds
  local name=$1 start=$SECONDS rc
  shift
  echo "== $name: $*" >>"$LOG"
  "$@" >>"$LOG" 2>&1
  rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s (t=$(($(date +%s) - T0)) s)" | tee -a "$LOG"
  return $rc
}

draw() {  # draw NAME MODEL [--steps K]: EVAL_N images into $OUT/NAME.npz, the grid kept for reports.tar
  local name=$1 model=$2
  shift 2
  run "sample $name" "${IMAGEGEN[@]}" sample --model "$model" --n "$EVAL_N" --seed 7 --out "$RUN/samples/$name" \
    "${COMMON[@]}" "$@" && mv "$RUN/samples/$name/samples.npz" "$OUT/$name.npz"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import jax; print(jax.devices())"; } \
  >>"$LOG" 2>&1
if phase train; then
  run ingest "${IMAGEGEN[@]}" ingest "${COMMON[@]}" || exit 1
  run teacher "${IMAGEGEN[@]}" train ddpm "${COMMON[@]}" -S "train.max_minutes=$TRAIN_MINUTES" --resume || exit 1
fi
if phase distill; then
  # Steps per round from the teacher's pace (run.json): a distillation step costs about two teacher train steps.
  per_round=$(python3 -c "
import json; ms = json.load(open('$RUN/reports/train_ddpm/run.json'))['ms_per_step']
print(max(50, int($DISTILL_SECONDS / 4 / (2.0 * ms / 1000))))")
  run distill "${IMAGEGEN[@]}" distill --teacher $RUN/models/ddpm --method progressive --out $RUN/models/ddpm_student \
    "${COMMON[@]}" -S distill.start_steps=64 -S distill.target_steps=4 -S "distill.steps_per_round=$per_round" \
    -S distill.learning_rate=0.0001
fi
if phase sample; then
  draw teacher_ddim100 $RUN/models/ddpm --steps 100
  draw teacher_ddim4 $RUN/models/ddpm --steps 4
  draw student_ddim4 $RUN/models/ddpm_student/final
fi
if phase speed; then
  run sample_speed python3 bench/sample_speed.py --model $RUN/models/ddpm_student/final $RUN/models/ddpm --n 1000 \
    --steps 4 --repeats 3 && grep '^{' "$LOG" | grep images_per_sec >"$OUT/sample_speed.jsonl"
fi
(cd $RUN && tar -cf "$OUT/reports.tar" reports models/*/model.json models/*/final/model.json samples/*/grid.png) \
  2>>"$LOG"
left=$((BUDGET_SECONDS - ($(date +%s) - T0)))
if phase compare && [ "$left" -gt 60 ]; then
  run compare_reference timeout "$left" python3 bench/compare_reference.py --device cuda --backends jax \
    -S train.mixed_precision=bf16 --references eager-bf16:1 compile-bf16:1 --sizes 32 --batch-sizes 128 512 \
    --rounds 3 --seconds 1.5 --wait-idle 10 --out "$OUT/compare_reference_gpu.json"
elif phase compare; then
  echo "== compare_reference: skipped, ${left} s left" | tee -a "$LOG"
fi
ls -la "$OUT" >>"$LOG"
