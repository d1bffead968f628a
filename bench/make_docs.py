"""Write ``docs/benchmarks.md`` from the recorded benchmark reports, so the figures in it are never typed by hand.

    python bench/make_docs.py                          # -> docs/benchmarks.md
    python bench/make_docs.py --out /tmp/benchmarks.md

Reads every ``*.json`` and ``*.csv`` under ``reports/bench/`` and every ``*.json`` under ``reports/profile/``
(in name order) and writes one section per file: what it measures, the machine as far as the file records it,
and its figures as a table. The kind of a report is told by its content: ``stages`` (``bench/pipeline_profile.py``),
``cells`` measured in rounds (``bench/compare_reference.py`` and ``bench/compare_sampling.py``), older
``rows`` with ``config`` (``bench/compare_reference.py`` before it measured in rounds), ``rows`` with
``runtime`` (``bench/serving.py``), a CSV
with ``family`` and ``steps`` columns (``bench/steps_curve.py``); anything else gets its top-level values listed.
``DESCRIPTIONS`` adds, per file name, what the file's name alone cannot say (the code state and the machine it
was measured on, where the JSON does not record it). The output depends only on the files read, so
``tests/test_bench_docs.py`` can check that the committed document is up to date.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interleaved import describe_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (("reports/bench", ("*.json", "*.csv")), ("reports/profile", ("*.json",)))

# What each recorded file measured beyond what its content says: the code state and the machine.
DESCRIPTIONS: dict[str, str] = {
    "compare_sampling_ddim50_16x16_epyc_zen4.json": (
        "The 16x16 cell on an idle 2-core AMD EPYC (Zen 4: AVX-512 and AVX512_BF16, no AMX; a virtual machine), at "
        "the sampling code of `pipeline_profile_epyc_zen4_one_clean_clone.json`: ours in float32 against the "
        "reference in float32 and under bfloat16 autocast. Without AMX, TensorFlow 2.20's oneDNN ignores the "
        "bfloat16 math mode, so ours has no bfloat16 products on this CPU (`--ours-cpu-math bf16` would compute "
        "float32); PyTorch's bfloat16 kernels use the CPU's AVX512_BF16 instructions. Ours leads every float32 "
        "reference (1.19x `compile:2`) and trails the compiled bfloat16 one."
    ),
    "compare_reference_train_epyc_zen4.json": (
        "Batch 64 at both sizes on an idle 2-core AMD EPYC (Zen 4: AVX-512 and AVX512_BF16, no AMX; a virtual "
        "machine), the same day as `compare_sampling_ddim50_16x16_epyc_zen4.json`, against the compiled references "
        "in bfloat16 and float32 and eager channels_last: ours trains in float32 here (`train.cpu_math: auto` finds "
        "no bfloat16 math on this CPU) and leads both float32 references (1.29x at 16x16, 1.24x at 32x32 over the "
        "faster of them), level with compiled bfloat16 PyTorch."
    ),
    "sample_step_profile_ddpm_16x16_b256_epyc_zen4.json": (
        "One sampling step (a U-Net evaluation of 256 images at 16x16) of ours in float32 beside the reference under "
        "bfloat16 autocast, eager and compiled, on the machine of `compare_sampling_ddim50_16x16_epyc_zen4.json`, "
        "the same day. Ours' kernel time is summed over its two row shards' threads (wall 276 ms), the reference's "
        "is the calling thread's: its bfloat16 convolutions (oneDNN's `jit_bf16:avx512_core_bf16`) take half the "
        "wall time ours' float32 ones do, and its compiled graph fuses GroupNorm into generated kernels (`other`)."
    ),
    "compare_sampling_ddim50_32x32_epyc_zen4.json": (
        "The 32x32 cell of `compare_sampling_ddim50_16x16_epyc_zen4.json`, the same day and machine: ours leads "
        "every float32 reference (1.31x `compile:2`) and trails the compiled bfloat16 one."
    ),
    "compare_sampling_ddim50_bf16_math_both_sides_xeon.json": (
        "Both sizes with bfloat16 products on both sides: ours with oneDNN's bfloat16 math for its float32 "
        "convolutions and matmuls (`--ours-cpu-math bf16`; activations and elementwise ops stay float32), the "
        "reference in float32 (`compile:2`, the fastest float32 configuration) and under bfloat16 CPU autocast "
        "(eager and compiled), at the code of `compare_sampling_ddim50_16x16_attention_rows_xeon.json`, another "
        "day, on an idle Xeon with AVX-512 and AMX."
    ),
    "compare_sampling_ddim50_16x16_attention_rows_xeon.json": (
        "The 16x16 cell of `compare_sampling_ddim50_16x16_serving_threads_xeon.json` again, the same day, after "
        "the attention blocks began computing their projections on rows (fused product and bias, no split of the "
        "activations), on an idle Xeon with AVX-512 and AMX."
    ),
    "compare_reference_train_group_norm_silu_xeon.json": (
        "Batch 64 at both sizes with GroupNorm+SiLU's hand-written gradient, against the two references that were "
        "fastest in `compare_reference_train_attention_rows_xeon.json` (bfloat16-autocast `torch.compile` overall, "
        "eager channels_last in float32), on an idle Xeon with AVX-512 and AMX (another day: compare ratios, not "
        "rates across reports)."
    ),
    "pipeline_profile_xeon_interleaved_with_baseline_group_norm_silu_ldm_400_steps.json": (
        "Clean-clone `dvc repro` runs of this code (everything in "
        "`pipeline_profile_xeon_interleaved_with_baseline_attention_rows_no_matplotlib.json`, plus GroupNorm+SiLU "
        "with a hand-written gradient and the LDM at 400 steps) interleaved with runs of that code "
        "(`--baseline 6778007`), three rounds on a 2-core Xeon with AVX-512 and AMX, idle before each run. The "
        "machine's speed varied during the hour: the baseline took 377.8, 409.2 and 432.7 s, its third round "
        "270.9 s in the stages the change touches (train_ddpm, train_ldm, distill, export@ddpm_student, "
        "export@ldm) against 225.5 and 243.0 s in the others. Those stages took a median 229.8 s here against "
        "243.0 s in the baseline's runs (-5.4%), the other stages 164.7 against 160.4 s (stages: the median run)."
    ),
    "pipeline_profile_xeon_interleaved_with_baseline_attention_rows_no_matplotlib.json": (
        "Clean-clone `dvc repro` runs of this code (everything in "
        "`pipeline_profile_xeon_interleaved_with_baseline_tracking_process_ldm_batch.json`, plus attention "
        "projections on rows and no matplotlib in the stage start-up) interleaved with runs of the same baseline "
        "as there (`--baseline 287486d`), three rounds on a 2-core Xeon with AVX-512 and AMX, idle before each "
        "run, another day (the baseline's median 410.2 s here against 413.9 s there; the third round ran on a "
        "faster machine than the first two): read the ratio (stages: the median run)."
    ),
    "compare_sampling_ddim50_16x16_serving_threads_xeon.json": (
        "The 16x16 cell again, another day, after attention began scaling its queries rather than its logits "
        "(the projections not yet computed on rows), with the exported SavedModel run on TensorFlow's own thread "
        "defaults as a serving process runs it (in `compare_sampling_ddim50_xeon.json` it ran on the `imagegen` "
        "command's one intra-op thread per row shard, so on one core), on an idle Xeon with AVX-512 and AMX."
    ),
    "pipeline_profile_sharded_xeon.json": (
        "A clean clone's `dvc repro` with CPU batches computed as row shards side by side "
        "(`imagegen.training.branches`), on an idle Xeon with AVX-512 and AMX."
    ),
    "pipeline_profile_unsharded_xeon.json": (
        "The same `dvc repro` on the same Xeon with whole batches on every intra-op thread (no row shards): "
        "the comparison for `pipeline_profile_sharded_xeon.json`."
    ),
    "pipeline_profile_epyc_zen4_one_clean_clone.json": (
        "A clean clone's `dvc repro` of the code with the float16 parity bound of 16 levels, on an idle 2-core AMD "
        "EPYC (Zen 4: AVX-512 and AVX512_BF16, no AMX; a virtual machine), where every convolution trains in "
        "float32. Every stage runs, the evaluations and registrations too: the models' bits differ from those the "
        "committed `dvc.lock` records (trained with bfloat16 convolutions on a Xeon with AMX). A clean clone of the "
        "code before, with the bound at 8, stopped at `export@ldm` on the same machine (float16 max error 10 "
        "levels) after 586.6 s."
    ),
    "pipeline_profile_unsharded_epyc_avx512.json": (
        "A clean clone's `dvc repro` with whole batches (no row shards), the start-up import hook and exit "
        "`gc.freeze`, and one compiled step for all progressive-distillation rounds, on an idle AMD EPYC with AVX-512."
    ),
    "pipeline_profile_unsharded_epyc_no_avx512.json": (
        "A clean clone's `dvc repro` with whole batches and TensorFlow's oneDNN kernels switched on "
        "(`TF_ENABLE_ONEDNN_OPTS=1`), on an idle AMD EPYC without AVX-512, where TensorFlow would leave them off."
    ),
    "pipeline_profile_plain_startup.json": (
        "`dvc repro` on an idle machine without the start-up import hook and exit `gc.freeze` "
        "(`imagegen.startup`), with every progressive-distillation round compiling its own step."
    ),
    "pipeline_profile_cpu_xla.json": (
        "`dvc repro` on an idle machine with the train steps XLA-compiled on the CPU, Keras' own GroupNormalization "
        "and longer default step counts than `reports/bench/steps_curve.csv` led to."
    ),
    "pipeline_profile_cpu_xla_loaded_partial.json": (
        "`dvc repro` with the train steps XLA-compiled on the CPU (as in `pipeline_profile_cpu_xla.json`) on a "
        "machine busy with other work (see the load averages); the run stopped in `distill`, so later stages "
        "are missing."
    ),
    "compare_reference_sharded_xeon.json": (
        "imagegen's DDPM train step against diffusers' `UNet2DModel` on PyTorch, TensorFlow in graph mode with "
        "row shards, on an idle Xeon with AVX-512 and AMX."
    ),
    "compare_reference_unsharded_xeon.json": (
        "As `compare_reference_sharded_xeon.json`, TensorFlow backend only, whole batches on two intra-op threads "
        "(`TF_NUM_INTRAOP_THREADS=2`), same machine."
    ),
    "compare_reference_unsharded_epyc.json": (
        "imagegen's DDPM train step against the PyTorch reference, TensorFlow in graph mode with whole batches "
        "and imagegen's GroupNormalization, 12-second windows, on an AMD EPYC."
    ),
    "compare_reference_cpu_xla.json": (
        "imagegen's DDPM train step against the PyTorch reference with the TensorFlow step XLA-compiled and "
        "Keras' own GroupNormalization."
    ),
    "pipeline_profile_xeon_three_clean_clones.json": (
        "Three clean-clone `dvc repro` runs one after another on an idle 2-core Xeon with AVX-512 and AMX, the "
        "code of `pipeline_profile_xeon_one_clean_clone.json` on a faster machine of the same kind (stages: the "
        "median run)."
    ),
    "pipeline_profile_xeon_three_clean_clones_serial_conversions.json": (
        "Three clean-clone `dvc repro` runs one after another on an idle 2-core Xeon with AVX-512 and AMX, each "
        "export converting its TFLite variants one after another in its own process: the before of "
        "`pipeline_profile_xeon_three_clean_clones_conversion_workers.json`, on the same machine, a slower one of "
        "the same kind than `pipeline_profile_xeon_three_clean_clones.json`'s (stages: the median run)."
    ),
    "pipeline_profile_xeon_three_clean_clones_conversion_workers.json": (
        "Three clean-clone `dvc repro` runs one after another on the idle 2-core Xeon of "
        "`pipeline_profile_xeon_three_clean_clones_serial_conversions.json`, right after it, with the diffusion "
        "exports converting their TFLite variants side by side in worker processes (`export.conversion_workers: "
        "auto`) and without the converter's metadata (stages: the median run)."
    ),
    "pipeline_profile_xeon_interleaved_with_baseline_tracking_process_ldm_batch.json": (
        "Clean-clone `dvc repro` runs of this code (MLflow in a child process that exits without teardown, the LDM "
        "on 500 steps of 256 latents, attention scaling its queries, 10 latency repeats per export artifact) "
        "interleaved with runs of the code before it (`--baseline 287486d`), three rounds on a 2-core Xeon with "
        "AVX-512 and AMX, idle before each run. The machine was about 8% slower than for "
        "`pipeline_profile_xeon_three_clean_clones_bf16_strided_convolutions.json`, whose code is the baseline "
        "(413.9 s median here against 381.5 s there), so the ratio is the figure to read (stages: the median run)."
    ),
    "pipeline_profile_xeon_three_clean_clones_tracking_process.json": (
        "Three clean-clone `dvc repro` runs one after another on a 2-core Xeon with AVX-512 and AMX, idle before "
        "each, with MLflow in a child process (before it exited without the interpreter's teardown: the 'other' "
        "column's 0.5 s per stage) and the LDM on 500 steps of 256 latents. The MLflow column fell from 20.4 to "
        "6.3 s and the LDM's training from 51.8 to 39.8 s against "
        "`pipeline_profile_xeon_three_clean_clones_bf16_strided_convolutions.json`, but the machine was slower than "
        "there: the DDPM's unchanged train steps took 68.4 s instead of 63.6. The third run was disturbed (its "
        "distillation 82 s, 13 s of it outside every phase), which is why the next profile interleaves a baseline "
        "(stages: the median run)."
    ),
    "pipeline_profile_xeon_three_clean_clones_bf16_strided_convolutions.json": (
        "Three clean-clone `dvc repro` runs one after another on an idle 2-core Xeon with AVX-512 and AMX, with the "
        "DCGAN and the VAE training with bfloat16 convolutions, strided and transposed ones computed from bfloat16 "
        "operands, on a slower machine of the kind of "
        "`pipeline_profile_xeon_three_clean_clones_bf16_kernel_gradients.json`'s: the DDPM, StyleGAN2 and "
        "distillation stages, which the change leaves as they were, took 4%, 4% and 3% longer than there, while "
        "the DCGAN and VAE training took 11% and 20% less (stages: the median run)."
    ),
    "pipeline_profile_xeon_three_clean_clones_bf16_kernel_gradients.json": (
        "Three clean-clone `dvc repro` runs one after another on an idle 2-core Xeon with AVX-512 and AMX, with "
        "the convolutions' kernel gradients from bfloat16 operands (the DDPM, its student and StyleGAN2), on a "
        "faster machine of the kind of `pipeline_profile_xeon_three_clean_clones_fused_adam.json`'s: the DCGAN, VAE "
        "and LDM training, which the change leaves as they were, took 8%, 13% and 6% less than there (stages: the "
        "median run), so most of the difference is the machine's."
    ),
    "pipeline_profile_xeon_three_clean_clones_fused_adam.json": (
        "Three clean-clone `dvc repro` runs one after another on an idle 2-core Xeon with AVX-512 and AMX, with "
        "the TensorFlow train steps updating through TensorFlow's fused Adam kernel, on a machine of the kind of "
        "`pipeline_profile_xeon_three_clean_clones_bf16_convolutions.json`'s (a day later), where the DCGAN and VAE "
        "training, which the change leaves as they were, took 3% and 7% longer than there (stages: the median run)."
    ),
    "pipeline_profile_xeon_three_clean_clones_bf16_convolutions.json": (
        "Three clean-clone `dvc repro` runs one after another on an idle 2-core Xeon with AVX-512 and AMX, with "
        "the DDPM, its progressive student and StyleGAN2 training with bfloat16 convolutions (`train.cpu_math: "
        "auto`), on a machine of the kind of `pipeline_profile_xeon_three_clean_clones_conversion_workers.json`'s, "
        "where the stages the change leaves alone (the DCGAN, VAE, LDM and feature training, the DCGAN and VAE "
        "exports) took 4% longer in total than there (stages: the median run)."
    ),
    "compare_reference_train_attention_rows_xeon.json": (
        "The default benchmark (every reference configuration: eager and compiled, 1 and 2 threads, channels_last, "
        "bfloat16 autocast) at the code of `compare_sampling_ddim50_16x16_attention_rows_xeon.json` (attention "
        "projections on rows; ours with bfloat16 convolutions as `imagegen train` runs them), another day, on an "
        "idle Xeon with AVX-512 and AMX (compare ratios within a report, not rates across reports)."
    ),
    "compare_reference_train_cpu_math_xeon.json": (
        "imagegen's trainer as `imagegen train ddpm` runs it on a CPU with AMX (`train.cpu_math: auto`: oneDNN "
        "computes the float32 convolutions in bfloat16, tensors stay float32) against the reference in float32 "
        'and under `torch.autocast("cpu", torch.bfloat16)`, eager and compiled, on an idle Xeon with AVX-512 and '
        "AMX (left out: the 1-thread references, never the fastest, and channels_last, the fastest float32 "
        "reference at 32x32 in `compare_reference_train_xeon.json` but 6% above eager there, far below bfloat16)."
    ),
    "compare_reference_train_fused_adam_xeon.json": (
        "imagegen with bfloat16 convolutions and the fused Adam update against the float32 and bfloat16-autocast "
        "references, 2 threads each, on an idle Xeon with AVX-512 and AMX, a day after "
        "`compare_reference_train_cpu_math_xeon.json` (the references ran faster that day too: compare ratios)."
    ),
    "compare_reference_train_bf16_kernel_gradients_xeon.json": (
        "imagegen with bfloat16 convolutions, the fused Adam update and the convolutions' kernel gradients from "
        "bfloat16 operands against the float32 and bfloat16-autocast references, 2 threads each, on an idle Xeon "
        "with AVX-512 and AMX (another day from `compare_reference_train_fused_adam_xeon.json`: compare ratios)."
    ),
    "compare_reference_train_bf16_strided_convolutions_xeon.json": (
        "`compare_reference_train_bf16_kernel_gradients_xeon.json` again with strided and transposed convolutions "
        "from bfloat16 operands too (the benchmark U-Net's downsampling layers), the same day as "
        "`pipeline_profile_xeon_three_clean_clones_bf16_strided_convolutions.json`: ours within its noise of there."
    ),
    "step_profile_ddpm_32x32_b64_bf16_kernel_gradients_xeon.json": (
        "`step_profile_ddpm_32x32_b64_xeon.json` again with the kernel gradients from bfloat16 operands: the filter "
        "gradient kernels run on bfloat16 tensors, with the casts to bfloat16 beside them."
    ),
    "compare_reference_train_bf16_xeon.json": (
        "bfloat16 on both sides: imagegen's trainer with `train.mixed_precision=bf16` (Keras mixed_bfloat16) "
        'against the reference in float32 and under `torch.autocast("cpu", torch.bfloat16)`, on an idle Xeon '
        "with AVX-512 and AMX (a different day from the float32 report: compare ratios within a report, not "
        "rates across reports)."
    ),
    "serving_one_core_epyc.json": "Serving speed on one pinned core of an AMD EPYC, default exports.",
    "serving_one_core_xeon.json": "Serving speed on one pinned core of a Xeon with AVX-512 and AMX, default exports.",
    "steps_curve_stylegan2.csv": (
        "The same for StyleGAN2 (default settings, digits): FID still falls from 1,200 to 1,400 steps (the default) "
        "and gains 4% more by 1,800. Its ms_per_step column is not an idle-machine figure."
    ),
    "step_profile_ddpm_16x16_b64_xeon.json": (
        "imagegen with bfloat16 convolutions (`train.cpu_math`, the DDPM's default on this CPU) and the fused Adam "
        "update against diffusers in float32 and under bfloat16 autocast, 2 threads each, on an idle Xeon with "
        "AVX-512 and AMX."
    ),
    "step_profile_ddpm_32x32_b64_xeon.json": "The same at 32x32, on the same machine a minute later.",
    "seed_spread_dcgan_cpu_math.csv": (
        "The default DCGAN on the default dataset (digits), trained with float32 convolutions and with bfloat16 ones "
        "(`train.cpu_math`) on seeds 0, 1 and 2, on a Xeon with AMX: the seed moves its FID from 2.23 to 3.86 in "
        "float32, the math its mean over the seeds by 3% (2.95 -> 3.05; per seed +9%, +2%, -2%). train_s is the "
        "whole `imagegen train` command on an otherwise idle machine."
    ),
    "seed_spread_ldm_batch_size.csv": (
        "The default LDM on the default dataset (digits), on the default VAE, seeds 0, 1 and 2: 2000 steps of 64 "
        "latents against 500 steps of 256 (the same latents seen). Run when the LDM still trained on "
        "`train.batch_size`, hence the keys; `ldm.batch_size: 256` and `ldm.steps: 500` are the defaults it chose. "
        "FID 1.09, 1.30, 1.21 (mean 1.20) -> 1.01, 1.08, 1.00 (mean 1.03). On the 4x4 latent grid a step is "
        "mostly per-op overhead: 16.9 ms for 64 latents, 41.4 ms for 256 (`train_throughput.py`'s step, Xeon, "
        "idle), so training takes 60% of the time. train_s is not a timing: other work ran beside seeds 1 and 2."
    ),
    "train_step_group_norm_silu_gradient_xeon.csv": (
        "ms per train step of the default DDPM (batch 64) and LDM (batch 256) at 16x16 (`bench/train_throughput.py "
        "--steps 60`, one process per measurement), GroupNorm and SiLU differentiated automatically against the "
        "hand-written gradient of `GroupNormalization(silu=True)`, in 5 interleaved rounds on an idle Xeon with "
        "AVX-512 and AMX (load 0.01 before, 1.09 after, its own). Medians: DDPM 47.2 -> 44.5 ms, LDM 50.5 -> 47.9 "
        "ms; the hand-written gradient was faster in every round."
    ),
    "steps_curve_ldm.csv": (
        "The same for the LDM (default settings on the default VAE, digits): FID 1.205 at 300 steps, 1.053 at 400 "
        "(the default since), 1.014 at 500 (the default before). Its ms_per_step column is not an idle-machine figure."
    ),
    "steps_curve_ddpm.csv": (
        "The same for the DDPM from 1,100 to 1,500 steps (the default), measured while GroupNorm and SiLU were still "
        "differentiated automatically: every 100 steps still lower the FID (3.92 -> 3.37). Its ms_per_step column is "
        "not an idle-machine figure."
    ),
    "steps_curve.csv": (
        "Sample quality of the default models on the default dataset (digits) against training length: one run "
        "per family, continued with `--resume` to each milestone and evaluated there."
    ),
}

SCRIPTS = {
    "profile": "bench/pipeline_profile.py",
    "compare": "bench/compare_reference.py",
    "train_step": "bench/compare_reference.py",
    "ddim_sampling": "bench/compare_sampling.py",
    "serving": "bench/serving.py",
    "steps": "bench/steps_curve.py",
    "seeds": "bench/seed_spread.py",
    "step_profile": "bench/step_profile.py",
    "other": "–",
}

KIND_TEXT = {
    "profile": (
        "`bench/pipeline_profile.py`: per DVC stage, seconds of wall time split into DVC's own overhead, process "
        "start and imports, compilation (first steps and predictor calls), the work, model and checkpoint I/O, "
        "MLflow, and the untimed rest."
    ),
    "compare": (
        "`bench/compare_reference.py`: training images/s of the same U-Net in imagegen (TensorFlow and JAX "
        "backends) and in diffusers on PyTorch, on the same step, interleaved; ratios are ours / reference, "
        "*matched* compares FLOP rates (images/s x FLOPs per image)."
    ),
    "train_step": (
        "`bench/compare_reference.py`: training images/s of the same U-Net in imagegen and in diffusers on PyTorch "
        "(eager and `torch.compile`, 1 and 2 threads, channels_last), each configuration in its own process, "
        "measured in interleaved rounds with the rest of the machine's CPU use recorded during each measurement "
        "(a round is *disturbed* when it exceeded 0.1 cores). Per cell: median and min-max images/s per "
        "configuration, and ours / the fastest reference as a ratio of medians with the range the extremes allow."
    ),
    "ddim_sampling": (
        "`bench/compare_sampling.py`: DDIM sampling images/s of the same U-Net: imagegen's sampler (TensorFlow "
        "graph, row shards) and its exported SavedModel against diffusers' `DDIMScheduler` loop on PyTorch "
        "(eager and `torch.compile`), each configuration in its own process, in interleaved rounds with the "
        "rest of the machine's CPU use recorded during each measurement. Per cell: median and min-max images/s, "
        "and each of ours / the fastest reference as a ratio of medians with its range."
    ),
    "serving": (
        "`bench/serving.py`: ms per image and images/s of each model through each runtime on one CPU core, "
        "one TensorFlow and one TFLite thread."
    ),
    "steps": "`bench/steps_curve.py`: evaluation metrics at each training-step milestone, with the real-vs-real floor.",
    "seeds": (
        "`bench/seed_spread.py`: evaluation metrics of one family trained once per seed and per setting, to tell a "
        "setting's effect on sample quality from the seed's."
    ),
    "step_profile": (
        "`bench/step_profile.py`: where one DDPM train step (or, `sample_step_profile`, one sampling step: a U-Net "
        "evaluation of the batch) of the benchmark U-Net spends its time, from each "
        "framework's own profiler: wall ms per step (timed without the profiler), kernel ms per step by category "
        "with its share, and ops per step. TensorFlow's kernel time is summed over its executor threads, which run "
        "ops side by side; PyTorch eager's is the calling thread's: compare shares and wall times, not raw kernel "
        "milliseconds across the two."
    ),
    "other": "Top-level values of the report.",
}


def fmt(value: Any) -> str:
    """A table cell: numbers rounded to what the measurement supports, missing values as an en dash."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        size = abs(value)
        if size >= 1000:
            return f"{value:,.0f}"
        if size >= 100:
            return f"{value:.1f}"
        if size >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value).replace("|", "\\|")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return lines


def number(text: str) -> Any:
    """A CSV cell as int or float where it is one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def kind_of(path: Path, data: Any) -> str:
    if path.suffix == ".csv":
        if data and {"family", "seed"} <= set(data[0]):
            return "seeds"
        return "steps" if data and {"family", "steps"} <= set(data[0]) else "other"
    if isinstance(data, dict) and isinstance(data.get("stages"), dict):
        return "profile"
    if isinstance(data, dict) and data.get("benchmark") in ("train_step", "ddim_sampling"):
        return data["benchmark"]
    if isinstance(data, dict) and data.get("benchmark") in ("train_step_profile", "sample_step_profile"):
        return "step_profile"
    rows = data.get("rows") if isinstance(data, dict) else None
    if isinstance(rows, list) and rows and isinstance(rows[0], dict):
        if "config" in rows[0]:
            return "compare"
        if "runtime" in rows[0]:
            return "serving"
    return "other"


def profile_section(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    facts = [
        f"command `{' '.join(data.get('command') or [])}`, exit status {fmt(data.get('exit_status'))}",
        f"{fmt(data.get('cpu_count'))} CPUs" + (f": {describe_cpu(data['cpu'])}" if data.get("cpu") else ""),
        f"load average before {fmt(data.get('load_average_before'))}, after {fmt(data.get('load_average_after'))}",
    ]
    stages = data["stages"]
    columns = [c for c in next(iter(stages.values()), {}) if c != "phases"]
    rows = [[name, *(vals.get(c) for c in columns)] for name, vals in stages.items()]
    totals = [sum(v.get(c) or 0.0 for v in stages.values()) for c in columns]
    rows.append(["**all stages**", *totals])
    lines = table(["stage", *columns], rows)
    lines += ["", f"Wall time of the whole run: {fmt(data.get('wall_s'))} s."]
    runs = data.get("runs") or []
    if len(runs) > 1:
        lines.append(
            f"{len(runs)} clean-clone runs, one after another: "
            + ", ".join(f"{fmt(r['wall_s'])} s (rest of the machine {fmt(r.get('other_cores'))} cores)" for r in runs)
            + f"; median {fmt(data.get('median_wall_s'))} s (the table is the median run)."
        )
    elif runs:
        lines.append(f"The rest of the machine used {fmt(runs[0].get('other_cores'))} cores on average during the run.")
    base = data.get("baseline")
    if base:
        low, high = base.get("round_ratio_range") or (None, None)
        lines += [
            "",
            f"Interleaved with commit `{base.get('rev')}` (one clean clone of each per round, in alternating order): "
            + ", ".join(f"{fmt(w)} s" for w in base.get("run_walls_s") or [])
            + f"; median {fmt(base.get('baseline_median_wall_s'))} s. This run / that one: "
            f"{fmt(base.get('ratio_of_medians'))} (ratio of medians; per round {fmt(low)}-{fmt(high)}).",
            "",
        ]
        base_stages = base.get("stages") or {}
        names = [n for n in stages if n in base_stages]
        lines += table(
            ["stage", f"wall at {base.get('rev')} (median run)", "wall here (median run)"],
            [[n, base_stages[n].get("wall"), stages[n].get("wall")] for n in names],
        )
    if data.get("skipped"):
        lines.append(f"Skipped: {fmt(data['skipped'])}.")
    return facts, lines


def arguments(argv: Sequence[str]) -> str:
    """The benchmark's command-line arguments without ``--out FILE`` (where a run wrote is no property of it)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            kept.append(arg)
    return f"`{' '.join(kept)}`" if kept else "(the defaults)"


def compare_section(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    rows = data["rows"]
    first = rows[0].get("raw", {})
    facts = [f"arguments {arguments(data.get('argv') or [])}"]
    ref = first.get("ref", {})
    if ref:
        facts.append(f"reference on torch {fmt(ref.get('torch'))} with {fmt(ref.get('threads'))} threads")
    for backend, label in (("tf", "TensorFlow"), ("jax", "JAX")):
        if backend in first:
            facts.append(f"{label} step XLA-compiled: {fmt(first[backend].get('jit_compile'))}")
    facts.append(f"1-minute load average at the end {fmt(data.get('load_end'))}")
    header = [
        "config",
        "parameters",
        "GFLOPs/image ours",
        "GFLOPs/image ref",
        "img/s TF",
        "img/s JAX",
        "img/s ref",
        "TF / ref",
        "JAX / ref",
        "TF / ref matched",
        "JAX / ref matched",
        "1-min load (TF, ref, JAX)",
    ]
    body = [
        [
            r.get("config"),
            r.get("parameters_ours"),
            r.get("gflops_per_image_ours"),
            r.get("gflops_per_image_reference"),
            r.get("images_per_sec_tf"),
            r.get("images_per_sec_jax"),
            r.get("images_per_sec_reference"),
            r.get("ratio_tf"),
            r.get("ratio_jax"),
            r.get("ratio_tf_matched_flops"),
            r.get("ratio_jax_matched_flops"),
            r.get("load_1min"),
        ]
        for r in rows
    ]
    return facts, table(header, body)


def machine_facts(state: dict[str, Any] | None, when: str) -> str:
    if not state:
        return f"machine {when}: not recorded"
    busy = ", ".join(f"{b['name']} {fmt(b['cores'])} cores" for b in state.get("busy_processes") or []) or "none"
    cpu = f"{describe_cpu(state['cpu'])}, " if state.get("cpu") else ""
    return (
        f"{when}: {cpu}load average {fmt(state.get('load_average'))}, {fmt(state.get('cores'))} cores, busy processes "
        f"{busy} ({'idle' if state.get('idle') else 'not idle'})"
    )


def rounds_section(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    facts = [
        f"arguments {arguments(data.get('argv') or [])}",
        f"{fmt(data.get('rounds'))} rounds per cell",
        machine_facts(data.get("machine_before"), "before"),
        machine_facts(data.get("machine_after"), "after"),
    ]
    lines: list[str] = []
    for cell in data["cells"]:
        summaries = {k.removeprefix("summary_"): v for k, v in cell.items() if k.startswith("summary_")}
        first = next(iter(summaries.values()))
        body = []
        for name, c in first["configs"].items():
            prep = cell["results"][name]["prepare"]
            warm = (prep.get("build_s") or 0.0) + (prep.get("warmup_s") or 0.0)
            body.append([name, c["median"], c["min"], c["max"], c["disturbed_rounds"], warm])
        lines += [f"**{cell['config']}**", ""]
        lines += table(["configuration", "median", "min", "max", "disturbed rounds", "build + first step s"], body)
        lines.append("")
        for ours, s in summaries.items():
            lo, hi = s["ratio_range"]
            lines.append(
                f"- {ours} / {s['best_reference']} (fastest reference): **{fmt(s['ratio'])}** "
                f"(range {fmt(lo)}-{fmt(hi)}); {s['verdict']}; target {fmt(s['target'])}x "
                f"{'met' if s['target_met'] else 'not met'}."
            )
        lines.append("")
    return facts, lines


def serving_section(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    threads = data.get("threads") or {}
    facts = [
        f"CPU architecture {fmt(data.get('cpu'))}, pinned to core {fmt(data.get('affinity'))}",
        "threads: " + ", ".join(f"{k} {fmt(v)}" for k, v in threads.items()),
        f"load average at start {fmt(data.get('loadavg_start'))}, at end {fmt(data.get('loadavg_end'))}",
    ]
    body = [
        [r.get("model"), r.get("runtime"), r.get("batch"), r.get("ms_per_image"), r.get("images_per_s")]
        for r in data["rows"]
    ]
    lines = table(["model", "runtime", "batch", "ms/image", "images/s"], body)
    lines += ["", f"Wall time of the benchmark: {fmt(data.get('wall_s'))} s."]
    return facts, lines


def step_profile_section(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    results = data["results"]
    facts = [
        f"{fmt(data.get('size'))}x{fmt(data.get('size'))}, batch {fmt(data.get('batch'))}, "
        f"{fmt(data.get('steps'))} traced steps",
        f"{fmt(data.get('cpu_count'))} cores" + (f": {describe_cpu(data['cpu'])}" if data.get("cpu") else ""),
        f"load average before {fmt(data.get('load_average_before'))}, after {fmt(data.get('load_average_after'))}",
    ]
    header = ["", *(r["side"] for r in results)]
    body: list[list[Any]] = [
        ["framework", *(r.get("framework") for r in results)],
        ["math", *(r.get("cpu_math", "autocast bf16" if "bf16" in r["side"] else "float32") for r in results)],
        ["wall ms/step", *(r["wall_ms_per_step"] for r in results)],
        ["kernel ms/step", *(r["kernel_ms_per_step"] for r in results)],
        ["ops/step", *(r["ops_per_step"] for r in results)],
    ]
    categories = list(results[0]["categories"])
    for c in categories:
        cells = [r["categories"][c] for r in results]
        body.append([c, *(f"{fmt(x['ms_per_step'])} ({100 * x['share']:.0f}%)" for x in cells)])
    lines = table(header, body)
    for r in results:
        if r.get("thread_busy_ms_per_step"):
            busy = ", ".join(f"{fmt(v)}" for v in r["thread_busy_ms_per_step"].values())
            lines += ["", f"{r['side']}: executor threads busy {busy} ms per step of {fmt(r['wall_ms_per_step'])}."]
    return facts, lines


def csv_section(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    if not rows:
        return [], ["(no rows)"]
    header = list(rows[0])
    return [], table(header, [[r.get(c) for c in header] for r in rows])


def other_section(data: Any) -> tuple[list[str], list[str]]:
    if not isinstance(data, dict):
        return [], [f"(a {type(data).__name__}, not tabulated)"]
    body = [[k, v] for k, v in data.items() if not isinstance(v, (dict, list)) or isinstance(v, list) and len(v) <= 8]
    return [], table(["key", "value"], body)


RENDER = {
    "profile": profile_section,
    "compare": compare_section,
    "train_step": rounds_section,
    "ddim_sampling": rounds_section,
    "serving": serving_section,
    "step_profile": step_profile_section,
}


def section(root: Path, path: Path) -> tuple[str, list[str]]:
    rel = path.relative_to(root).as_posix()
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            data: Any = [{k: number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    else:
        data = json.loads(path.read_text())
    kind = kind_of(path, data)
    if kind in RENDER:
        facts, body = RENDER[kind](data)
    elif path.suffix == ".csv":
        facts, body = csv_section(data)
    else:
        facts, body = other_section(data)
    lines = [f"## `{rel}`", ""]
    what = DESCRIPTIONS.get(path.name)
    lines.append(KIND_TEXT[kind] + (f" {what}" if what else ""))
    lines.append("")
    lines.append("Recorded in the file: " + ("; ".join(facts) + "." if facts else "no machine details."))
    lines += ["", *body, ""]
    return kind, lines


def report_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for folder, patterns in SOURCES:
        found = {p for pattern in patterns for p in (root / folder).glob(pattern) if p.is_file()}
        files += sorted(found, key=lambda p: p.name)
    return files


def render(root: Path = ROOT) -> str:
    files = report_files(root)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python bench/make_docs.py` from the files under `reports/bench/` and `reports/profile/`; "
        "do not edit by hand (`tests/test_bench_docs.py` fails when this file and the reports disagree). "
        "Each figure belongs to the machine, load and code of its own report: compare rows within a report, "
        "and across reports only where the descriptions say the machine is the same.",
        "",
        "Each section names the script that writes such a report (`python bench/<script>.py --help` lists its "
        "options); after adding or replacing a report, regenerate this page.",
        "",
        "| report | written by |",
        "|---|---|",
    ]
    sections: list[str] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        kind, body = section(root, path)
        lines.append(f"| [`{rel}`](#{anchor(rel)}) | `{SCRIPTS[kind]}` |")
        sections += body
    return "\n".join([*lines, "", *sections]).rstrip("\n") + "\n"


def anchor(heading: str) -> str:
    """GitHub's anchor of a ``## `heading` `` line."""
    text = heading.lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="project folder holding reports/ (default: this one)")
    ap.add_argument("--out", type=Path, default=None, help="output file (default: <root>/docs/benchmarks.md)")
    args = ap.parse_args(argv)
    out = args.out or args.root / "docs" / "benchmarks.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(args.root))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
