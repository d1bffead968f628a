"""imagegen's DDPM trainer against the best PyTorch reference (diffusers' UNet2DModel) on CPU, in rounds.

The same U-Net in both: imagegen's at base_channels=32, channel_mults=[1,2,2], num_res_blocks=1,
attention_resolutions=[16], groups=8 is diffusers' UNet2DModel with block_out_channels=(32, 64, 64),
layers_per_block=1, single-head attention at side 16 (and in the middle block), norm_num_groups=8
(1,112,801 parameters at 32x32; the parameter counts are printed and must agree). One train step in both:
x_t = q_sample(x_0, t, eps) with host-drawn t and eps, eps-MSE, global grad-norm clip 1.0, Adam (ours) /
AdamW (reference), then an EMA update of every weight.

The reference runs in every configuration worth trying on a CPU, each in its own worker process: eager and
``torch.compile`` (inductor), 1 and 2 threads, channels_last; ours is the TensorFlow trainer the ``imagegen``
command runs (and, with ``--backends tf jax``, the JAX one). Each cell (image side x batch) is measured in
``--rounds`` interleaved rounds, one worker at a time, with the rest of the machine's CPU use recorded during
every measurement (:mod:`interleaved`); the table gives median and min-max per configuration and the ratio of
medians ours / fastest reference with its range, and says when the figures do not allow a conclusion.

    python bench/compare_reference.py                 # 16x16 and 32x32, batch 64 and 128, 5 rounds
    python bench/compare_reference.py --quick         # smoke run: 16x16, batch 8, eager reference, 2 rounds
    python bench/compare_reference.py --out reports/bench/compare_reference_xeon.json
    # bfloat16 on both sides (AMX / AVX512-BF16 CPUs): ours mixed_bfloat16, the reference under CPU autocast
    python bench/compare_reference.py -S train.mixed_precision=bf16 \
        --references eager:2 compile:2 eager-bf16:2 compile-bf16:2
    # on an NVIDIA GPU: ours on JAX (bf16, jit) against the reference on CUDA under bf16 autocast
    python bench/compare_reference.py --device cuda --backends jax -S train.mixed_precision=bf16 \
        --references eager-bf16:1 compile-bf16:1 --sizes 32 --batch-sizes 128 512 --wait-idle 10

With ``--device cuda`` the reference's tensors and autocast are on the GPU and ours is the JAX trainer on the
host's accelerator (``KERAS_BACKEND=jax``); each measurement ends by reading the last step's results back, so
asynchronous dispatch is timed whole. The FLOPs per image of both sides are recorded (XLA's cost analysis of
ours on JAX, ``FlopCounterMode`` of the reference).

Needs the benchmark extra: ``pip install -e ".[bench]"`` with a CPU build of torch, and a C++ compiler for
``torch.compile``. Run it on an otherwise idle machine: it checks and says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagegen import startup

sys.path.insert(0, str(Path(__file__).resolve().parent))
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

HERE = Path(__file__).resolve().parent
# imagegen's DDPM U-Net that has exactly diffusers' UNet2DModel(block_out_channels=(32, 64, 64), ...) weights.
OURS = [
    "ddpm.base_channels=32",
    "ddpm.channel_mults=[1,2,2]",
    "ddpm.num_res_blocks=1",
    "ddpm.attention_resolutions=[16]",
    "ddpm.groups=8",
    "ddpm.dropout=0.0",
]
WIDTHS = (32, 64, 64)
ATTENTION_SIDES = (16,)
GROUPS = 8
TIMESTEPS = 1000
LEARNING_RATE = 2e-3
EMA_DECAY = 0.995
BACKENDS = {"tf": "tensorflow", "jax": "jax"}
REFERENCE_MODES = ("eager", "eager-cl", "compile", "compile-cl", "eager-bf16", "compile-bf16")
"""eager / torch.compile (inductor), optionally channels_last (NHWC activations and weights) or bf16 autocast
(``torch.autocast("cpu", torch.bfloat16)``: the reference's counterpart of ``train.mixed_precision=bf16`` and of
``train.cpu_math=bf16``, which the DDPM trains with by default on CPUs with AMX or AVX512_BF16)."""
DEFAULT_REFERENCES = ["eager:2", "eager:1", "eager-cl:2", "compile:2", "compile:1", "eager-bf16:2", "compile-bf16:2"]
TARGET = 1.2


# ----------------------------------------------------------------------------------------------- reference
def build_reference(size: int, channels: int = 1) -> Any:
    """diffusers' UNet2DModel with our U-Net's widths, blocks and attention sides (single-head attention)."""
    from diffusers import UNet2DModel

    sides = [size // 2**i for i in range(len(WIDTHS))]
    down = tuple("AttnDownBlock2D" if s in ATTENTION_SIDES else "DownBlock2D" for s in sides)
    up = tuple("AttnUpBlock2D" if s in ATTENTION_SIDES else "UpBlock2D" for s in reversed(sides))
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=WIDTHS,
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=GROUPS,
        attention_head_dim=None,  # one head of the block's width, as ours
        dropout=0.0,
    )


def reference_parameters(size: int, channels: int = 1) -> int:
    return sum(p.numel() for p in build_reference(size, channels).parameters())


def ours_family(size: int, overrides: list[str]) -> Any:
    """imagegen's DDPM family on the benchmark U-Net (``OURS`` plus ``overrides``), built from seed 0 as every
    benchmark measuring ours builds it."""
    import keras

    from imagegen.config import load_params
    from imagegen.training.families import build_family

    keras.utils.set_random_seed(0)
    return build_family("ddpm", load_params(None, OURS + overrides), (size, size, 1), 10)


def ours_parameters(size: int, channels: int = 1) -> int:
    from imagegen.config import load_params
    from imagegen.models.unet import build_unet

    return build_unet(load_params(None, OURS).ddpm, size, channels, 10).count_params()


@dataclass
class ReferenceNetwork:
    """The reference U-Net in one ``REFERENCE_MODES`` mode: the module, what to call, its layout, its autocast."""

    model: Any  # the torch module (its parameters)
    net: Any  # what a step calls: the module, or its torch.compile wrapper
    layout: Any  # torch memory format of inputs: channels_last for ``-cl`` modes
    bf16: bool  # ``-bf16`` modes: the U-Net runs under autocast
    device: str = "cpu"  # torch device type: cpu | cuda

    def autocast(self) -> Any:
        import torch

        return torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16)


def reference_network(size: int, mode: str, train: bool, device: str = "cpu") -> ReferenceNetwork:
    """The seeded reference U-Net set up for ``mode`` on ``device`` (the one place a mode's name is read)."""
    import torch

    torch.manual_seed(0)
    layout = torch.channels_last if mode.endswith("-cl") else torch.contiguous_format
    model = build_reference(size).train(train).to(device=device, memory_format=layout)
    net = torch.compile(model) if mode.startswith("compile") else model
    return ReferenceNetwork(model, net, layout, mode.endswith("-bf16"), device)


def reference_step(
    size: int, batch: int, mode: str, device: str = "cpu"
) -> tuple[Callable[[], float], Callable[[int], float], int]:
    """(step, flops_per_image(count_batch), parameters) of the torch reference in ``mode``: the same step as ours."""
    import torch
    from diffusers import DDPMScheduler
    from torch.utils.flop_counter import FlopCounterMode

    from imagegen.data.loader import BatchStream
    from imagegen.data.processed import Split

    reference = reference_network(size, mode, train=True, device=device)
    params = [p for p in reference.model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=LEARNING_RATE)
    sched = DDPMScheduler(num_train_timesteps=TIMESTEPS, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(max(batch * 4, 512), size, size, 1), dtype=np.uint8)
    stream = BatchStream(Split(images, rng.integers(0, 10, len(images))), batch, seed=0)

    def x0_batch(n: int | None = None) -> Any:
        x = torch.from_numpy(next(stream).images[:n]).permute(0, 3, 1, 2).to(device)
        return x.contiguous(memory_format=reference.layout)

    def loss_of(fn: Any, x0: Any) -> Any:
        eps = torch.randn_like(x0)
        t = torch.randint(0, TIMESTEPS, (x0.shape[0],), device=x0.device)
        with reference.autocast():
            predicted = fn(sched.add_noise(x0, eps, t), t).sample
        return torch.nn.functional.mse_loss(predicted.float(), eps)

    def step() -> float:
        loss = loss_of(reference.net, x0_batch())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - EMA_DECAY)
        return loss.item()  # wait for the step, as ours does

    def flops_per_image(n: int) -> float:
        with FlopCounterMode(display=False) as counter:
            loss_of(reference.model, x0_batch(n)).backward()
        opt.zero_grad(set_to_none=True)
        return counter.get_total_flops() / n

    return step, flops_per_image, sum(p.numel() for p in params)


# ----------------------------------------------------------------------------------------------- workers
def _steps_for(step: Callable[[], Any], seconds: float, min_steps: int, max_steps: int) -> tuple[int, float]:
    """(steps filling ``seconds``, warm-up seconds): one step compiles, three more calibrate."""
    t0 = time.perf_counter()
    _wait(step())
    warmup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(3):
        result = step()
    _wait(result)
    per_step = (time.perf_counter() - t0) / 3
    return int(max(min_steps, min(max_steps, round(seconds / max(per_step, 1e-6))))), warmup


def _wait(result: Any) -> None:
    """Read a step's results back to the host: an accelerator's asynchronous dispatch is then timed whole."""
    for value in result.values() if isinstance(result, Mapping) else [result]:
        np.asarray(value)


def _time(step: Callable[[], Any], n: int, batch: int) -> dict:
    t0 = time.perf_counter()
    result = None
    for _ in range(n):
        result = step()
    _wait(result)
    elapsed = time.perf_counter() - t0
    return {"rate": batch * n / elapsed, "seconds": elapsed, "steps": n}


class TrainerWorker:
    """One configuration's state inside its worker: the step of the cell being measured and its step count."""

    def __init__(self, kind: str, mode: str, device: str = "cpu") -> None:
        self.kind, self.mode, self.device = kind, mode, device
        self.step: Callable[[], Any] | None = None
        self.n = 0
        self.batch = 0

    def handle(self, req: dict) -> dict:
        if req["op"] == "drop":
            self.step = None
            import gc

            gc.collect()
            return {}
        if req["op"] == "measure":
            assert self.step is not None
            return _time(self.step, self.n, self.batch)
        size, self.batch = req["image_size"], req["batch_size"]
        info = self._build(size, self.batch, req["overrides"])
        self.n, warmup = _steps_for(self.step, req["seconds"], req["min_steps"], req["max_steps"])
        return {**info, "warmup_s": warmup, **_time(self.step, self.n, self.batch)}

    def _build(self, size: int, batch: int, overrides: list[str]) -> dict:
        if self.kind == "ref":
            import torch

            self.step, flops_fn, n_params = reference_step(size, batch, self.mode, self.device)
            return {
                "parameters": n_params,
                "flops_per_image": flops_fn(min(batch, 8)),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "device": torch.cuda.get_device_name() if self.device == "cuda" else "cpu",
            }
        import keras
        from train_throughput import prepare

        from imagegen.training.precision import accelerator, resolve_jit

        keras.backend.clear_session()
        p = prepare("ddpm", batch, size, 1, OURS + overrides)
        self.step = p.step
        info = {
            "parameters": p.family.trainable_count(),
            "jit_compile": resolve_jit(p.params.train.jit_compile),
            "dtype_policy": p.policy,
            "cpu_math": p.cpu_math,
            "device": accelerator(),
        }
        if self.kind == "jax":
            info["flops_per_image"] = _xla_flops(p.stepper, p.next_batch()) / batch
        return info


def _xla_flops(stepper: Any, batch: Mapping[str, Any]) -> float:
    """FLOPs of one jitted JAX train step by XLA's cost analysis (of the lowered program where the backend gives
    one, else of the compiled program)."""
    import jax

    fn = stepper._step_fn if hasattr(stepper._step_fn, "lower") else jax.jit(stepper._step_fn)
    lowered = fn.lower(stepper.state, dict(batch))
    # The lowered program's analysis needs no compile, but some backends (CUDA) give none before compiling.
    cost = lowered.cost_analysis() or lowered.compile().cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return float(cost["flops"])


def worker_main(kind: str, mode: str, threads: int, device: str = "cpu") -> None:
    """Import once (the slow part), then answer prepare / measure / drop requests."""
    if kind == "ref":
        import torch

        torch.set_num_threads(threads)
        import diffusers  # noqa: F401
    else:
        import keras  # noqa: F401
    serve(TrainerWorker(kind, mode, device).handle, {"ready": kind})


def reference_worker(script: str, ref: str, log_dir: Path, device: str = "cpu") -> Worker:
    """The worker of reference configuration ``MODE:THREADS`` of benchmark ``script`` (torch on that many threads)."""
    mode, threads = ref.split(":")
    env = {**os.environ, "OMP_NUM_THREADS": threads, "KERAS_BACKEND": "tensorflow"}
    argv = [sys.executable, script, "--worker", "ref", "--mode", mode, "--threads", threads]
    argv += ["--device", device] if device != "cpu" else []  # bench/compare_sampling.py's workers run on the CPU
    return Worker(f"ref-{mode}-{threads}", argv, env, log_dir)


def start_workers(backends: list[str], references: list[str], log_dir: Path, device: str = "cpu") -> dict[str, Worker]:
    """Ours first (``ours-tf``, ``ours-jax``), then each reference configuration (``ref-compile:2``, ...)."""
    script = str(Path(__file__).resolve())
    workers = {}
    for b in backends:
        env = {**os.environ, "KERAS_BACKEND": BACKENDS[b]}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        startup.set_tensorflow_defaults(env)  # ours on the kernels the `imagegen` command trains on
        argv = [sys.executable, script, "--worker", b, "--device", device]
        workers[f"ours-{b}"] = Worker(f"ours-{b}", argv, env, log_dir)
    for ref in references:
        workers[f"ref-{ref}"] = reference_worker(script, ref, log_dir, device)
    for w in workers.values():
        w.read()  # ready
    return workers


def reference_spec(text: str) -> str:
    mode, _, threads = text.partition(":")
    if mode not in REFERENCE_MODES or not threads.isdigit() or int(threads) < 1:
        raise argparse.ArgumentTypeError(f"expected MODE:THREADS with MODE one of {', '.join(REFERENCE_MODES)}")
    return text


def print_cell(cell: Mapping[str, Any]) -> None:
    """One cell's table: images/s per configuration, parameters and FLOPs per image of both sides, the ratio."""
    res = cell["results"]
    params = {n: r["prepare"].get("parameters") for n, r in res.items()}
    flops = {n: r["prepare"].get("flops_per_image") for n, r in res.items()}
    ref_flops = next((f for n, f in flops.items() if n.startswith("ref-") and f), None)
    ours_flops = next((f for n, f in flops.items() if n.startswith("ours-") and f), None)
    xla = f"; ours {ours_flops / 1e9:.3f} GFLOP/image by XLA's cost analysis" if ours_flops else ""
    print_summary(
        f"{cell['config']}  (training images/s; parameters {params}; reference "
        f"{ref_flops / 1e9 if ref_flops else float('nan'):.3f} GFLOP/image by FlopCounterMode{xla})",
        [cell[k] for k in cell if k.startswith("summary_")],
        "images/s",
    )
    configs = next((cell[k]["configs"] for k in cell if k.startswith("summary_")), {})
    achieved = [f"{n} {configs[n]['median'] * flops[n] / 1e12:.2f}" for n in configs if flops.get(n)]
    if achieved:  # the FLOP rate each side sustains: images/s x its own FLOPs per image
        print(f"  achieved TFLOP/s (median images/s x FLOPs/image): {', '.join(achieved)}")


def write_report(
    out: Path, cells: list, start: Mapping, end: Mapping | None, rounds: int, request: Mapping, device: str
) -> None:
    """The JSON report; ``machine_after`` is null (and ``complete`` false) while cells are still to come."""
    from imagegen.fileio import write_json

    write_json(
        out,
        {
            "benchmark": "train_step",
            "machine_before": start,
            "machine_after": end,
            "complete": end is not None,
            "rounds": rounds,
            "request": request,
            "cells": cells,
            "argv": sys.argv[1:],
            "device": device,
        },
    )


# ----------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 16x16, batch 8, eager reference, 2 rounds")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="image sides (default 16 32)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 64 128")
    ap.add_argument("--backends", nargs="+", default=["tf"], choices=list(BACKENDS), help="ours on these")
    ap.add_argument(
        "--references",
        nargs="+",
        type=reference_spec,
        default=None,
        help=f"reference MODE:THREADS configurations (default {' '.join(DEFAULT_REFERENCES)})",
    )
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per cell (default 5)")
    ap.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement (default 4)")
    ap.add_argument("--out", type=Path, default=None, help="also write the cells as JSON here")
    ap.add_argument("--wait-idle", type=float, default=None, help="seconds to wait for an idle machine (default 180)")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="param override (ours)")
    ap.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="cuda: both sides on the GPU (ours: --backends jax)"
    )
    ap.add_argument("--worker", choices=[*BACKENDS, "ref"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=REFERENCE_MODES, default="eager", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(args.worker, args.mode, args.threads, args.device)
        return
    sizes = args.sizes or ([16] if args.quick else [16, 32])
    batches = args.batch_sizes or ([8] if args.quick else [64, 128])
    references = args.references or (["eager:2"] if args.quick else DEFAULT_REFERENCES)
    rounds = args.rounds or (2 if args.quick else 5)
    request = {
        "seconds": args.seconds if args.seconds is not None else (0.2 if args.quick else 4.0),
        "min_steps": 2 if args.quick else 3,
        "max_steps": 4 if args.quick else 200,
        "overrides": args.overrides,
    }
    t0 = time.perf_counter()
    start = settled_state(args.wait_idle if args.wait_idle is not None else (0 if args.quick else 180))
    print(describe_state(f"before (after waiting {start['waited_s']:.0f} s for idle)", start), flush=True)
    cells = []
    with tempfile.TemporaryDirectory(prefix="compare_reference_") as logs:
        workers = start_workers(args.backends, references, Path(logs), args.device)
        try:
            for size in sizes:
                for batch in batches:
                    print(f"{size}x{size} b{batch}: preparing {len(workers)} configurations", flush=True)
                    res = run_rounds(workers, {"image_size": size, "batch_size": batch, **request}, rounds)
                    cell = {
                        "config": f"{size}x{size}x1 b{batch}",
                        "image_size": size,
                        "batch_size": batch,
                        "results": res,
                    }
                    for ours in (n for n in workers if n.startswith("ours-")):
                        refs = [n for n in workers if n.startswith("ref-")]
                        cell[f"summary_{ours}"] = summarize(res, ours, refs, TARGET)
                    cells.append(cell)
                    print_cell(cell)  # as each cell ends: a run stopped early keeps what it measured
                    if args.out:
                        write_report(args.out, cells, start, None, rounds, request, args.device)
        finally:
            for w in workers.values():
                w.close()
    end = machine_state(after_work=True)
    mismatch = [c["config"] for c in cells if len({r["prepare"]["parameters"] for r in c["results"].values()}) > 1]
    disturbed = sum(m["disturbed"] for c in cells for r in c["results"].values() for m in r["rounds"])
    idle_cpu = max(
        (m["idle_workers_cpu_s"] for c in cells for r in c["results"].values() for m in r["rounds"]), default=0.0
    )
    print()
    print(describe_state("after", end))
    print(
        f"parameters equal: {not mismatch}{'' if not mismatch else ' (differ at ' + ', '.join(mismatch) + ')'}; "
        f"disturbed measurements: {disturbed}; most CPU the idle workers used during one measurement: "
        f"{idle_cpu:.2f} s; wall {time.perf_counter() - t0:.0f} s"
    )
    if args.out:
        write_report(args.out, cells, start, end, rounds, request, args.device)
    if mismatch:
        raise SystemExit(2)


if __name__ == "__main__":
    main()
