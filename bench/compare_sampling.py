"""DDIM sampling speed of imagegen's DDPM against diffusers' DDIMScheduler loop with the same U-Net, in rounds.

The U-Net is the one of ``compare_reference.py`` (imagegen's base_channels=32, channel_mults=[1,2,2] with
attention at side 16 = diffusers' UNet2DModel with block_out_channels=(32, 64, 64)), untrained: speed does not
depend on the weights. Each configuration draws ``--n`` images with ``--steps`` deterministic DDIM steps
(eta 0, x0 clipped) from one noise batch per call:

- ``ours-graph``: the sampler ``imagegen sample`` and ``imagegen evaluate`` use (``imagegen.sampling``: the
  host-side DDIM loop over the compiled TensorFlow predictor, rows in side-by-side shards on a CPU);
- ``ours-savedmodel``: the exported SavedModel (``imagegen export``: the DDIM loop unrolled in one graph),
  called through its ``serving_default`` signature in a process with TensorFlow's own thread defaults, as a
  service loading the export runs it (the ``imagegen`` command's one intra-op thread per row shard would leave
  this unsharded graph one core);
- ``ref-MODE:THREADS``: ``UNet2DModel`` under ``torch.inference_mode`` with ``DDIMScheduler.step``, eager or
  ``torch.compile`` (inductor), optionally channels_last or under bfloat16 autocast (``-bf16``), on 1 or 2 threads.

``--ours-cpu-math bf16`` runs ours with oneDNN's bfloat16 math for float32 convolutions and matmuls
(``TF_SET_ONEDNN_FPMATH_MODE=BF16``, what ``train.cpu_math=bf16`` asks for in training); the JSON records which
math ours ran (``request.ours_cpu_math``). Compare it with the ``-bf16`` references: both sides then round their
products to bfloat16.

Each configuration runs in its own worker; the cells are measured in ``--rounds`` interleaved rounds with the
machine's other activity recorded during every measurement (:mod:`interleaved`), and summarized as median and
min-max images/s, and ours (each of the two) / the fastest reference as a ratio of medians with its range.

    python bench/compare_sampling.py                       # 16x16 and 32x32, n=256, DDIM-50, 5 rounds
    python bench/compare_sampling.py --quick               # smoke run: 16x16, n=8, 2 steps, eager reference
    python bench/compare_sampling.py --out reports/bench/compare_sampling_xeon.json
    python bench/compare_sampling.py --ours-cpu-math bf16 --references compile:2 eager-bf16:2 compile-bf16:2

Needs the benchmark extra (``pip install -e ".[bench]"``, a CPU build of torch) and a C++ compiler for
``torch.compile``. Run it on an otherwise idle machine: it checks and says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imagegen import startup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_reference import (  # noqa: E402
    REFERENCE_MODES,
    TIMESTEPS,
    ours_family,
    reference_network,
    reference_spec,
    reference_worker,
)
from interleaved import (  # noqa: E402
    Worker,
    describe_state,
    machine_state,
    print_summary,
    run_rounds,
    serve,
    settled_state,
    summarize,
)

OURS_KINDS = ("graph", "savedmodel")
DEFAULT_REFERENCES = ["eager:2", "eager-cl:2", "compile:2"]
TARGET = 1.2


def ours_sampler(kind: str, size: int, n: int, steps: int, overrides: list[str], workdir: Path) -> Callable[[], Any]:
    """One DDIM draw of ``n`` images by imagegen's sampler (``graph``) or its exported SavedModel."""
    import keras

    from imagegen.sampler_settings import SamplerSettings
    from imagegen.sampling import make_sampler

    keras.backend.clear_session()
    family = ours_family(size, overrides)
    if kind == "graph":
        sample = make_sampler(family, SamplerSettings(sampler="ddim", steps=steps, eta=0.0, clip_x0=True))
        return lambda: sample(n, np.random.default_rng(0))
    from imagegen.artifact import load_model, save_model
    from imagegen.export.graph import build_serving, export_savedmodel
    from imagegen.export.parity import parity_inputs, savedmodel_runner

    save_model(family, workdir / "model", {"step": 0})
    loaded = load_model(workdir / "model")
    serving = build_serving(loaded, ddpm_steps=steps, clip_x0=True)
    export_savedmodel(serving, workdir / "savedmodel")
    run = savedmodel_runner(workdir / "savedmodel")
    inputs = parity_inputs(serving, n, 0, loaded.family.spec["num_classes"])
    return lambda: run(inputs)


def reference_sampler(mode: str, size: int, n: int, steps: int) -> Callable[[], Any]:
    """One DDIM draw of ``n`` images by diffusers' scheduler loop over the reference U-Net in ``mode``
    (``-bf16``: the U-Net under CPU autocast, the scheduler in float32)."""
    import torch
    from diffusers import DDIMScheduler

    reference = reference_network(size, mode, train=False)
    sched = DDIMScheduler(
        num_train_timesteps=TIMESTEPS, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=True
    )
    sched.set_timesteps(steps)

    def draw() -> Any:
        x = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(0))
        x = x.contiguous(memory_format=reference.layout)
        with torch.inference_mode(), reference.autocast():
            for t in sched.timesteps:
                eps = reference.net(x, t.expand(n)).sample.float()
                x = sched.step(eps, t, x, eta=0.0).prev_sample
        return x.numpy()

    return draw


class SamplingWorker:
    """One configuration's state inside its worker: the draw of the cell being measured."""

    def __init__(self, kind: str, mode: str) -> None:
        self.kind, self.mode = kind, mode
        self.draw: Callable[[], Any] | None = None
        self.n = 0
        self.workdir: tempfile.TemporaryDirectory | None = None

    def timed(self) -> dict:
        assert self.draw is not None
        t0 = time.perf_counter()
        self.draw()
        elapsed = time.perf_counter() - t0
        return {"rate": self.n / elapsed, "seconds": elapsed}

    def handle(self, req: dict) -> dict:
        if req["op"] == "drop":
            self.draw = None
            if self.workdir is not None:
                self.workdir.cleanup()
                self.workdir = None
            return {}
        if req["op"] == "measure":
            return self.timed()
        size, self.n, steps = req["image_size"], req["n"], req["steps"]
        t0 = time.perf_counter()
        if self.kind == "ref":
            self.draw = reference_sampler(self.mode, size, self.n, steps)
        else:
            self.workdir = tempfile.TemporaryDirectory(prefix="compare_sampling_")
            self.draw = ours_sampler(self.kind, size, self.n, steps, req["overrides"], Path(self.workdir.name))
        build_s = time.perf_counter() - t0
        warm = self.timed()  # the first draw compiles
        return {"build_s": build_s, "warmup_s": warm["seconds"], **self.timed()}


def worker_main(kind: str, mode: str, threads: int) -> None:
    if kind == "ref":
        import torch

        torch.set_num_threads(threads)
        import diffusers  # noqa: F401
    else:
        import keras  # noqa: F401
    serve(SamplingWorker(kind, mode).handle, {"ready": kind})


def start_workers(ours: list[str], references: list[str], log_dir: Path, cpu_math: str) -> dict[str, Worker]:
    """The workers, ready; ours compute with ``cpu_math`` (``bf16``: oneDNN's bfloat16 math, else float32)."""
    script = str(Path(__file__).resolve())
    workers = {}
    for kind in ours:
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        env.pop(startup.CPU_MATH_ENV, None)
        if cpu_math == "bf16":
            env[startup.CPU_MATH_ENV] = "BF16"
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if kind == "graph":
            startup.set_tensorflow_defaults(env)  # the kernels and threads the `imagegen` command samples on
        else:  # a serving process: oneDNN as imagegen sets it, the threads TensorFlow picks (all cores)
            env.update({k: v for k, v in startup.TENSORFLOW_DEFAULTS.items() if k not in env})
        workers[f"ours-{kind}"] = Worker(f"ours-{kind}", [sys.executable, script, "--worker", kind], env, log_dir)
    for ref in references:
        workers[f"ref-{ref}"] = reference_worker(script, ref, log_dir)
    for w in workers.values():
        w.read()  # ready
    return workers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 16x16, n=8, 2 steps, eager reference, 2 rounds")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="image sides (default 16 32)")
    ap.add_argument("--n", type=int, default=None, help="images per draw (default 256)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50)")
    ap.add_argument("--ours", nargs="+", default=list(OURS_KINDS), choices=OURS_KINDS, help="our samplers")
    ap.add_argument(
        "--references",
        nargs="+",
        type=reference_spec,
        default=None,
        help=f"reference MODE:THREADS configurations, MODE in {', '.join(REFERENCE_MODES)} "
        f"(default {' '.join(DEFAULT_REFERENCES)})",
    )
    ap.add_argument(
        "--ours-cpu-math",
        choices=("float32", "bf16"),
        default="float32",
        help="ours: float32 convolutions in float32 (default) or in oneDNN's bfloat16 math",
    )
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per cell (default 5)")
    ap.add_argument("--out", type=Path, default=None, help="also write the cells as JSON here")
    ap.add_argument("--wait-idle", type=float, default=None, help="seconds to wait for an idle machine (default 180)")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="param override (ours)")
    ap.add_argument("--worker", choices=[*OURS_KINDS, "ref"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=REFERENCE_MODES, default="eager", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(args.worker, args.mode, args.threads)
        return
    sizes = args.sizes or ([16] if args.quick else [16, 32])
    references = args.references or (["eager:2"] if args.quick else DEFAULT_REFERENCES)
    rounds = args.rounds or (2 if args.quick else 5)
    request = {
        "n": args.n or (8 if args.quick else 256),
        "steps": args.steps or (2 if args.quick else 50),
        "overrides": args.overrides,
        "ours_cpu_math": args.ours_cpu_math,
    }
    t0 = time.perf_counter()
    start = settled_state(args.wait_idle if args.wait_idle is not None else (0 if args.quick else 180))
    print(describe_state(f"before (after waiting {start['waited_s']:.0f} s for idle)", start), flush=True)
    cells = []
    with tempfile.TemporaryDirectory(prefix="compare_sampling_") as logs:
        workers = start_workers(args.ours, references, Path(logs), args.ours_cpu_math)
        try:
            for size in sizes:
                print(f"{size}x{size} n={request['n']} DDIM-{request['steps']}: preparing", flush=True)
                res = run_rounds(workers, {"image_size": size, **request}, rounds)
                refs = [n for n in workers if n.startswith("ref-")]
                cell = {
                    "config": f"{size}x{size}x1 n{request['n']} ddim{request['steps']} ours {args.ours_cpu_math}",
                    "image_size": size,
                    "results": res,
                }
                for ours in (n for n in workers if n.startswith("ours-")):
                    cell[f"summary_{ours}"] = summarize(res, ours, refs, TARGET)
                cells.append(cell)
        finally:
            for w in workers.values():
                w.close()
    end = machine_state(after_work=True)
    for cell in cells:
        warm = {n: round(r["prepare"]["build_s"] + r["prepare"]["warmup_s"], 1) for n, r in cell["results"].items()}
        summaries = [cell[k] for k in cell if k.startswith("summary_")]
        print_summary(f"{cell['config']}  (sampling images/s; build + first draw s: {warm})", summaries, "images/s")
    disturbed = sum(m["disturbed"] for c in cells for r in c["results"].values() for m in r["rounds"])
    print()
    print(describe_state("after", end))
    print(f"disturbed measurements: {disturbed}; wall {time.perf_counter() - t0:.0f} s")
    if args.out:
        from imagegen.fileio import write_json

        write_json(
            args.out,
            {
                "benchmark": "ddim_sampling",
                "machine_before": start,
                "machine_after": end,
                "rounds": rounds,
                "request": request,
                "cells": cells,
                "argv": sys.argv[1:],
            },
        )


if __name__ == "__main__":
    main()
