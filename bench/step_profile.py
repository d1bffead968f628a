"""Where a DDPM train step's time goes, op by op: imagegen's TensorFlow step beside the PyTorch reference's.

The benchmark U-Net of ``compare_reference.py`` (imagegen's DDPM with exactly diffusers' ``UNet2DModel`` weights)
trains one batch per step on each side, as in that benchmark; here each side runs a few warm-up steps, its wall
time per step is taken without a profiler, and then ``--steps`` steps are traced with the framework's own
profiler (TensorFlow: ``tf.profiler`` XPlane; PyTorch: ``torch.profiler``). Per step it reports the kernel time
by category (convolution, matmul, normalization, elementwise, reduction, data movement, optimizer, other), the
op count, and the largest op types.

``--what sample`` profiles a sampling step instead: one U-Net evaluation of the whole batch, as a DDIM step of
``compare_sampling.py`` makes it (ours: the compiled predictor ``imagegen sample`` uses, rows in side-by-side
shards; the reference: the module under ``torch.inference_mode``).

The two profiles count differently, and the report says which: TensorFlow runs a step's ops on its inter-op
threads side by side, one intra-op thread each (``imagegen.startup``), so its kernel time is summed over the
threads (with each thread's busy time beside it); PyTorch eager runs the ops one after another on the calling
thread, each parallel inside, so its kernel time is the calling thread's (close to the wall time). Compare the
shares, and the wall times, not the raw kernel milliseconds. ``torch.compile`` modes fuse ops into generated
kernels, which count as ``other``.

Each side runs in its own process. Examples::

    python bench/step_profile.py                                   # 32x32, batch 64, ours vs eager-bf16:2
    python bench/step_profile.py --size 16 --references eager:2 eager-bf16:2 \\
        --out reports/bench/step_profile_ddpm_xeon.json
    python bench/step_profile.py --what sample --size 16 --batch 256 --references compile-bf16:2

Needs the benchmark extra (``pip install -e ".[bench]"``). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CATEGORIES = (
    "convolution", "matmul", "normalization", "elementwise", "reduction", "data_movement", "optimizer", "other",
)  # fmt: skip
_DATA_MOVEMENT = re.compile(
    r"concat|split|slice|tile|transpose|reshape|pad|resize|upsample|gather|pack|unpack|copy|clone|contiguous|"
    r"permute|view|expand|cat|stack|select|index|fill|zero|empty|to$|_to_copy|broadcast|identity|repeat",
    re.I,
)
_REDUCTION = re.compile(r"^(mean|sum|max|min|prod|all|any|argmax|argmin|var|std)\b|reduce", re.I)


def tensorflow_category(op_type: str, name: str) -> str:
    """The category of a TensorFlow kernel from its op type and its node name (layer scopes)."""
    t = op_type.lower()
    if "applyadam" in t or name.split("/", 1)[0].startswith("adam"):
        return "optimizer"
    if "conv2d" in t or "depthwiseconv" in t:
        return "convolution"
    if "matmul" in t or "einsum" in t:
        return "matmul"
    if re.search(r"(^|/)[^/]*norm[^/]*/", name.lower()):
        return "normalization"
    if _DATA_MOVEMENT.search(t):
        return "data_movement"
    if _REDUCTION.search(t):
        return "reduction"
    if t in ("readvariableop", "assignvariableop", "assignaddvariableop", "assignsubvariableop", "noop"):
        return "other"
    return "elementwise"


def torch_category(name: str) -> str:
    """The category of a PyTorch profiler event (``aten::...``, ``autograd::...``, compiled kernels)."""
    op = name.split("::")[-1].lower()
    if "foreach" in op or "adam" in op or "lerp" in op or "clip_grad" in op:
        return "optimizer"
    if "conv" in op:
        return "convolution"
    if op in ("mm", "bmm", "addmm", "baddbmm", "matmul", "linear", "einsum") or "scaled_dot_product" in op:
        return "matmul"
    if "norm" in op:
        return "normalization"
    if _DATA_MOVEMENT.search(op):
        return "data_movement"
    if _REDUCTION.search(op):
        return "reduction"
    if name.startswith("aten::"):
        return "elementwise"
    return "other"


def summarize(events: Iterable[tuple[str, str, float]], steps: int) -> dict[str, Any]:
    """(category, op type, ms) events of ``steps`` steps -> per-step kernel time by category and the top op types."""
    by_category: collections.Counter[str] = collections.Counter()
    by_type: collections.Counter[str] = collections.Counter()
    count = 0
    for category, op_type, ms in events:
        by_category[category] += ms
        by_type[op_type] += ms
        count += 1
    total = sum(by_category.values()) or 1.0
    return {
        "kernel_ms_per_step": round(total / steps, 3),
        "ops_per_step": round(count / steps, 1),
        "categories": {
            c: {"ms_per_step": round(by_category[c] / steps, 3), "share": round(by_category[c] / total, 4)}
            for c in CATEGORIES
        },
        "top_ops": [[t, round(ms / steps, 3)] for t, ms in by_type.most_common(12)],
    }


def _wall_ms(step: Callable[[], Any], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return 1000 * (time.perf_counter() - start) / steps


# ------------------------------------------------------------------------------------------------ ours
def ours_train_step(size: int, batch: int, overrides: list[str]) -> tuple[Callable[[], None], dict[str, Any]]:
    """imagegen's DDPM train step on the benchmark U-Net (waiting for its metrics, as the trainer does)."""
    import numpy as np
    from compare_reference import OURS
    from train_throughput import prepare

    p = prepare("ddpm", batch, size, 1, OURS + overrides)

    def step() -> None:
        for value in p.step().values():
            float(np.asarray(value))

    return step, {"cpu_math": p.cpu_math, "dtype_policy": p.policy}


def ours_sample_step(size: int, batch: int, overrides: list[str]) -> tuple[Callable[[], None], dict[str, Any]]:
    """One evaluation of the benchmark U-Net's denoiser on ``batch`` noisy images through the compiled predictor
    ``imagegen sample`` uses (a DDIM step's network call)."""
    import keras
    import numpy as np
    from compare_reference import TIMESTEPS, ours_family

    from imagegen.training.families import family_spec
    from imagegen.training.precision import cpu_math_in_effect
    from imagegen.training.predict import compiled_predictor

    family = ours_family(size, overrides)
    network = family.networks[family_spec("ddpm").denoiser[0]]
    predict = compiled_predictor(network)
    rng = np.random.default_rng(0)
    inputs = [
        rng.standard_normal((batch, size, size, 1)).astype("float32"),
        rng.integers(0, TIMESTEPS, batch).astype(network.inputs[1].dtype),
        *(np.zeros((batch, *x.shape[1:]), x.dtype) for x in network.inputs[2:]),
    ]

    def step() -> None:
        np.asarray(keras.tree.flatten(predict(*inputs))[0])

    return step, {"cpu_math": cpu_math_in_effect(), "dtype_policy": keras.config.dtype_policy().name}


def profile_ours(size: int, batch: int, steps: int, warmup: int, overrides: list[str], what: str) -> dict[str, Any]:
    """imagegen's DDPM train step (``what="train"``) or sampling step (``"sample"``) on the benchmark U-Net,
    traced with tf.profiler."""
    sys.path.insert(0, str(HERE))
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    step, state = (ours_train_step if what == "train" else ours_sample_step)(size, batch, overrides)
    for _ in range(warmup):
        step()
    wall = _wall_ms(step, steps)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            step()
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(Path(logdir).rglob("*.xplane.pb")).read_bytes())
    events: list[tuple[str, str, float]] = []
    busy: dict[str, float] = {}
    for plane in space.planes:
        if "host" not in plane.name.lower():
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            spans: list[list[int]] = []
            for e in sorted(line.events, key=lambda e: e.offset_ps):
                end = e.offset_ps + e.duration_ps
                if spans and e.offset_ps <= spans[-1][1]:
                    spans[-1][1] = max(spans[-1][1], end)
                else:
                    spans.append([e.offset_ps, end])
                full = names.get(e.metadata_id, "")
                if ":" not in full or full.startswith("Executor"):
                    continue  # the executor's own bookkeeping around the kernels
                node, op_type = full.rsplit(":", 1)
                events.append((tensorflow_category(op_type, node), op_type, e.duration_ps / 1e9))
            busy[f"thread{len(busy)}"] = round(sum(b - a for a, b in spans) / 1e9 / steps, 3)
    return {
        "side": "ours",
        "framework": f"tensorflow {tf.__version__}",
        **state,
        "wall_ms_per_step": round(wall, 3),
        "kernel_time": "summed over the executor threads",
        "thread_busy_ms_per_step": busy,
        **summarize(events, steps),
    }


# ------------------------------------------------------------------------------------------------ reference
def reference_sample_step(size: int, batch: int, mode: str) -> Callable[[], Any]:
    """One evaluation of the reference U-Net in ``mode`` on ``batch`` noisy images, as a DDIM step of
    ``compare_sampling.py`` makes it."""
    import torch
    from compare_reference import TIMESTEPS, reference_network

    reference = reference_network(size, mode, train=False)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=generator).contiguous(memory_format=reference.layout)
    t = torch.randint(0, TIMESTEPS, (batch,), generator=generator)

    def step() -> Any:
        with torch.inference_mode(), reference.autocast():
            return reference.net(x, t).sample.float()

    return step


def profile_reference(
    size: int, batch: int, steps: int, warmup: int, mode: str, threads: int, what: str
) -> dict[str, Any]:
    """The reference train step of ``compare_reference.py`` (``what="train"``) or sampling step (``"sample"``) in
    ``mode`` on ``threads`` threads, traced with torch.profiler."""
    sys.path.insert(0, str(HERE))
    import torch
    from compare_reference import reference_step

    torch.set_num_threads(threads)
    step = reference_step(size, batch, mode)[0] if what == "train" else reference_sample_step(size, batch, mode)
    for _ in range(warmup):
        step()
    wall = _wall_ms(step, steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [
        (torch_category(avg.key), avg.key, avg.self_cpu_time_total / 1000.0 / max(avg.count, 1))
        for avg in prof.key_averages()
        for _ in range(avg.count)
        if avg.self_cpu_time_total > 0
    ]
    return {
        "side": f"reference {mode}:{threads}",
        "framework": f"torch {torch.__version__}",
        "wall_ms_per_step": round(wall, 3),
        "kernel_time": "the calling thread's (ops run one after another, each parallel inside)",
        **summarize(events, steps),
    }


# ------------------------------------------------------------------------------------------------ driver
def run_worker(args: list[str]) -> dict[str, Any]:
    """One side in its own process (TensorFlow and PyTorch never share one); its JSON result."""
    done = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"step_profile worker {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(results: list[dict[str, Any]]) -> None:
    head = f"{'category':14s}" + "".join(f"{r['side'][:22]:>24s}" for r in results)
    print(head)
    print(f"{'wall ms/step':14s}" + "".join(f"{r['wall_ms_per_step']:>24.1f}" for r in results))
    print(f"{'kernel ms/step':14s}" + "".join(f"{r['kernel_ms_per_step']:>24.1f}" for r in results))
    print(f"{'ops/step':14s}" + "".join(f"{r['ops_per_step']:>24.0f}" for r in results))
    for c in CATEGORIES:
        cells = "".join(
            f"{r['categories'][c]['ms_per_step']:>15.1f} ({100 * r['categories'][c]['share']:4.1f}%)" for r in results
        )
        print(f"{c:14s}{cells}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--what", choices=("train", "sample"), default="train", help="the step profiled")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="traced steps (and steps timed without the profiler)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--references", nargs="*", default=["eager-bf16:2"], help="MODE:THREADS of compare_reference")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="param override (ours)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind = args.worker[0]
        if kind == "ours":
            from imagegen import startup

            startup.set_tensorflow_defaults()  # the kernels and threads `imagegen train` uses
            result = profile_ours(args.size, args.batch, args.steps, args.warmup, args.overrides, args.what)
        else:
            mode, threads = kind.split(":")
            result = profile_reference(args.size, args.batch, args.steps, args.warmup, mode, int(threads), args.what)
        print(json.dumps(result))
        return
    common = ["--what", args.what, "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps)]
    common += ["--warmup", str(args.warmup), *(f"-S{o}" for o in args.overrides)]
    load_before = os.getloadavg()
    results = [run_worker(["ours", *common])]
    results += [run_worker([ref, *common]) for ref in args.references]
    load_after = os.getloadavg()
    what = "train step" if args.what == "train" else "sampling step (one U-Net evaluation)"
    print(f"DDPM {what}, benchmark U-Net, {args.size}x{args.size}, batch {args.batch}, {args.steps} traced steps")
    print_table(results)
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} cores)")
    if args.out:
        sys.path.insert(0, str(HERE))
        from interleaved import cpu_description

        report = {
            "benchmark": f"{args.what}_step_profile",
            "argv": sys.argv[1:],
            "size": args.size,
            "batch": args.batch,
            "steps": args.steps,
            "cpu_count": os.cpu_count(),
            "cpu": cpu_description(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
