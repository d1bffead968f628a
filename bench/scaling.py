"""Scale-out benchmark: data-parallel training throughput over 1, 2, 4 devices, and ingest peak memory.

    python bench/scaling.py                               # both parts, defaults below
    python bench/scaling.py --part train --family ddpm --devices 1 2 4 --batch-size 64 --steps 30
    python bench/scaling.py --part ingest --images 50000 --side 16

Training: each device count runs in its own process with the JAX backend. On a host without accelerators
the devices are *simulated* CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``): they share
the same CPU cores, so the figures show the SPMD program works and what it costs, not a speed-up. On a GPU
host the real local GPUs are used (``--real-devices``). The global batch is fixed; images/s excludes the
first (compiling) step.

Ingest: a generated ``folder`` dataset of small PNGs is ingested in a child process and the child's peak
resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` in a launcher with no other child) is printed
beside a baseline child that only imports the same modules. ``--reference-src DIR`` repeats the ingest
with another checkout's ``src`` (e.g. ``git archive <commit> src | tar -x -C /tmp/old``) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TRAIN_CHILD = r"""
import json, sys, tempfile
from pathlib import Path
import jax, numpy as np
from imagegen.config import load_params
from imagegen.data.loader import BatchStream
from imagegen.data.processed import Dataset, ProcessedDataset, Split, write_processed
from imagegen.stages.train import seed_everything
from imagegen.training.families import build_family
from imagegen.training.loop import Trainer

family_name = sys.argv[1]
devices, batch, steps, size = (int(a) for a in sys.argv[2:6])
tmp = Path(tempfile.mkdtemp(prefix="imagegen-scaling-"))
rng = np.random.default_rng(0)
split = Split(rng.integers(0, 256, (1024, size, size, 1), dtype=np.uint8), rng.integers(0, 10, 1024).astype(np.int64))
write_processed(Dataset("toy", {"train": split, "test": split}, [str(i) for i in range(10)], "bench"), tmp / "data")
dataset = ProcessedDataset.open(tmp / "data")
params = load_params(None, ["tracking.enabled=false", f"data.image_size={size}", f"train.batch_size={batch}",
                            f"train.devices={devices}", f"train.log_every={steps}", "train.checkpoint_every=100000",
                            "train.sample_every=100000"])
seed_everything(params.seed)
family = build_family(family_name, params, dataset.image_shape, dataset.num_classes)
stream = BatchStream(dataset.split("train"), batch, params.seed)
trainer = Trainer(family, stream, params.train, params.seed, tmp / "ckpt", show_progress=False)
result = trainer.fit(steps + 1)  # the first step compiles and is not timed
mesh = 1 if getattr(trainer.stepper, "parallel", None) is None else trainer.stepper.parallel.mesh.size
print("RESULT " + json.dumps({"devices": mesh, "platform": jax.default_backend(),
                              "images_per_sec": result.images_per_sec, "ms_per_step": result.ms_per_step}))
"""

LAUNCHER = """
import resource, subprocess, sys
proc = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
assert proc.returncode == 0, proc.returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""

INGEST_PREAMBLE = """
import sys
from pathlib import Path
from imagegen.config import load_params
from imagegen.stages.ingest import run_ingest
params = load_params(None, ["tracking.enabled=false", "data.name=folder", f"data.path={sys.argv[1]}",
                            f"data.image_size={sys.argv[3]}", "data.channels=3"])
"""
INGEST_CHILD = INGEST_PREAMBLE + "run_ingest(params, out_dir=Path(sys.argv[2]))\n"


def bench_train(family: str, devices: list[int], batch: int, steps: int, size: int, real: bool) -> list[dict]:
    rows = []
    for n in devices:
        env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
        if not real:
            env["JAX_PLATFORMS"] = "cpu"
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
        args = [
            sys.executable,
            "-c",
            TRAIN_CHILD,
            family,
            str(n),
            str(batch),
            str(steps),
            str(size),
        ]
        proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{n} device(s) failed:\n{proc.stderr[-3000:]}")
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        row = json.loads(line.removeprefix("RESULT "))
        row["per_device_images_per_sec"] = row["images_per_sec"] / row["devices"]
        rows.append(row)
        print(json.dumps({"bench": "train", "family": family, "batch_size": batch, "image_size": size, **row}))
    return rows


def write_folder(root: Path, n: int, side: int, classes: int = 10) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / f"class{i % classes}" / f"{i:06d}.png")


def peak_rss_mib(code: str, args: list[str], src: Path, cwd: Path) -> float:
    """Peak RSS of ``code`` run with ``src`` first on the path, from ``cwd`` (no params.yaml there: the
    defaults of that checkout's own schema, so an older checkout can be measured too)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "KERAS_BACKEND": "jax",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"ingest child failed:\n{proc.stderr[-3000:]}")
    return int(proc.stdout.strip().splitlines()[-1]) / 1024.0  # ru_maxrss is KiB on Linux


def bench_ingest(images: int, side: int, reference_src: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="imagegen-ingest-bench-") as tmp:
        root = Path(tmp) / "imgs"
        write_folder(root, images, side)
        raw_mib = images * side * side * 3 / 2**20
        sources = [("this checkout", REPO / "src")] + ([("reference", reference_src)] if reference_src else [])
        for label, src in sources:
            out = Path(tmp) / f"out-{len(label)}"
            base = peak_rss_mib(INGEST_PREAMBLE, [str(root), "-", str(side)], src, Path(tmp))
            peak = peak_rss_mib(INGEST_CHILD, [str(root), str(out), str(side)], src, Path(tmp))
            print(
                json.dumps(
                    {
                        "bench": "ingest",
                        "code": label,
                        "images": images,
                        "side": side,
                        "dataset_mib": round(raw_mib, 1),
                        "peak_rss_mib": round(peak, 1),
                        "baseline_rss_mib": round(base, 1),
                        "above_baseline_mib": round(peak - base, 1),
                    }
                )
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "train", "ingest"], default="all")
    ap.add_argument("--family", default="ddpm", choices=["ddpm", "dcgan", "vae"])
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30, help="timed steps (after one compiling step)")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument(
        "--real-devices",
        action="store_true",
        help="use the host's accelerators, not simulated CPUs",
    )
    ap.add_argument("--images", type=int, default=50_000, help="ingest: PNGs in the generated folder")
    ap.add_argument("--side", type=int, default=16, help="ingest: PNG side (and data.image_size)")
    ap.add_argument("--reference-src", type=Path, default=None, help="ingest: also measure this src folder")
    args = ap.parse_args()
    if args.part in ("all", "train"):
        rows = bench_train(
            args.family,
            args.devices,
            args.batch_size,
            args.steps,
            args.image_size,
            args.real_devices,
        )
        kind = "devices" if args.real_devices else "simulated CPU devices (shared cores)"
        print(f"\n{args.family}, global batch {args.batch_size}, {args.image_size}x{args.image_size}, {kind}")
        print(f"{'devices':>8} {'images/s':>10} {'per device':>11} {'ms/step':>9}")
        for r in rows:
            print(
                f"{r['devices']:>8} {r['images_per_sec']:>10.1f} {r['per_device_images_per_sec']:>11.1f} "
                f"{r['ms_per_step']:>9.1f}"
            )
    if args.part in ("all", "ingest"):
        bench_ingest(args.images, args.side, args.reference_src)


if __name__ == "__main__":
    main()
