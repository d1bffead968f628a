"""Sample quality against training length, from one training run: which step counts buy nothing.

In a project whose data and feature model exist (``imagegen ingest``, ``imagegen train-features``), trains
``--family`` to the first milestone, then continues with ``--resume -S <family>.steps=N`` to each next one (a
resumed run continues exactly: same batches, same noise, learning rates without schedules), and evaluates
the model at every milestone with ``imagegen evaluate``. Prints one row per milestone (FID, KID, precision,
recall, class coverage, the training's ms/step) and writes them as CSV. The model folder and checkpoints of the
family in that project are overwritten; tracking is off. Example::

    python bench/steps_curve.py --project /tmp/proj --family dcgan --steps 600 1000 1400 2000 3000 \\
        --out reports/bench/steps_curve_dcgan.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLUMNS = (
    "steps", "fid", "kid_mean", "precision", "recall", "class_coverage", "ms_per_step", "train_s", "evaluate_s",
)  # fmt: skip


def imagegen(project: Path, *args: str) -> float:
    """Run one ``imagegen`` command in ``project``; its wall time. A failure stops the benchmark with its output."""
    start = time.perf_counter()
    done = subprocess.run(["imagegen", *args], cwd=project, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"imagegen {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, required=True, help="project folder (params.yaml, data, models/features)")
    ap.add_argument("--family", required=True, choices=["dcgan", "vae", "ddpm", "ldm", "stylegan2"])
    ap.add_argument("--steps", type=int, nargs="+", required=True, help="milestones, ascending")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="param override")
    ap.add_argument("--out", type=Path, help="write the rows as CSV here")
    args = ap.parse_args()
    if args.steps != sorted(set(args.steps)):
        sys.exit("--steps: give distinct milestones in ascending order")
    project, family = args.project.resolve(), args.family
    settings = [
        *(f"-S{o}" for o in ["tracking.enabled=false", f"train.keep_checkpoints={len(args.steps) + 1}"]),
        *(f"-S{o}" for o in args.overrides),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, n in enumerate(args.steps):
            resume = ["--resume"] if i else []
            train_s = imagegen(project, "train", family, *resume, *settings, f"-S{family}.steps={n}")
            train = json.loads((project / "reports" / f"train_{family}" / "run.json").read_text())  # measured
            out = Path(tmp) / f"evaluate_{n}"
            evaluate_s = imagegen(project, "evaluate", "--model", f"models/{family}", "--out", str(out), *settings)
            metrics = json.loads((out / "metrics.json").read_text())
            row = {"steps": n, **{k: metrics[k] for k in COLUMNS[1:6]}, "ms_per_step": train["ms_per_step"]}
            rows.append({**row, "train_s": train_s, "evaluate_s": evaluate_s})
            print(" ".join(f"{k}={rows[-1][k]:.4g}" for k in COLUMNS), flush=True)
    print(f"floor FID (real vs real): {metrics['floor']['fid']:.4g}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: f"{v:.6g}" for k, v in row.items()} for row in rows)


if __name__ == "__main__":
    main()
