"""Sample quality of one family across seeds and settings: is a change in FID the setting's or the seed's?

In a project whose data and feature model exist (``imagegen ingest``, ``imagegen train-features``), trains
``--family`` once per seed and per setting (``-S`` overrides, one group per ``--setting``) into a temporary folder
and evaluates each model with ``imagegen evaluate``. Prints one row per run (FID, KID, precision, recall, class
coverage, train seconds) and the mean FID per setting, and writes the rows as CSV. Tracking is off; nothing in
the project is written. Example::

    python bench/seed_spread.py --project /tmp/proj --family dcgan --seeds 0 1 2 \\
        --setting train.cpu_math=float32 --setting train.cpu_math=bf16 --out reports/bench/seed_spread_dcgan.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
from pathlib import Path

from steps_curve import imagegen

COLUMNS = ("family", "setting", "seed", "fid", "kid_mean", "precision", "recall", "class_coverage", "train_s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, required=True, help="a project with data and models/features")
    ap.add_argument("--family", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--setting", action="append", default=None, help="space-separated -S overrides of one setting (repeatable)"
    )
    ap.add_argument("--out", type=Path, required=True, help="CSV file")
    args = ap.parse_args()
    settings = args.setting or [""]
    rows = []
    with tempfile.TemporaryDirectory(prefix="seed_spread_") as tmp:
        for seed in args.seeds:
            for i, setting in enumerate(settings):
                run = Path(tmp) / f"run_{seed}_{i}"
                model, report = run / "model", run / "evaluation"
                # The train command writes its report and checkpoints under train.reports_dir and
                # train.checkpoints_dir, the project's own by default: both go to this run's folder.
                private = [f"train.reports_dir={run / 'reports'}", f"train.checkpoints_dir={run / 'checkpoints'}"]
                overrides = [f"seed={seed}", "tracking.enabled=false", *private, *setting.split()]
                sets = [arg for item in overrides for arg in ("-S", item)]
                train_s = imagegen(args.project, "train", args.family, *sets, "--out", str(model))
                off = ("-S", "tracking.enabled=false")
                imagegen(args.project, "evaluate", "--model", str(model), *off, "--out", str(report))
                metrics = json.loads((report / "metrics.json").read_text())
                row = {"family": args.family, "setting": setting, "seed": seed, "train_s": round(train_s, 1)}
                row.update({k: metrics[k] for k in COLUMNS if k in metrics})
                rows.append(row)
                print(", ".join(f"{k}={row.get(k)}" for k in COLUMNS), flush=True)
    for setting in settings:
        fids = [r["fid"] for r in rows if r["setting"] == setting]
        print(f"{setting or '(defaults)'}: mean FID {statistics.mean(fids):.3f} over seeds {args.seeds}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
