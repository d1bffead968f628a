"""Print the Markdown results table of an experiment folder from each family's metrics.json and train_log.csv.

    python scripts/experiments/experiment_table.py reports/experiments/fashion_mnist_32

One row per family folder (steps reached = the last step of its training log), then the real-vs-real floor.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

COLUMNS = ("fid", "relative_fid", "kid_mean", "precision", "recall", "density", "coverage", "class_entropy")


def last_step(log: Path) -> str:
    """The step of the training log's last row ('' without a log)."""
    if not log.is_file():
        return ""
    with log.open() as fh:
        rows = list(csv.DictReader(fh))
    return rows[-1]["step"] if rows else ""


def main(folder: Path) -> None:
    header = "| family | steps | FID | relative FID | KID | precision | recall | density | coverage | class entropy |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    floor = None
    for family in sorted(p for p in folder.iterdir() if (p / "metrics.json").is_file()):
        metrics = json.loads((family / "metrics.json").read_text())
        floor = metrics["floor"]
        cells = " | ".join(f"{metrics[k]:.4g}" for k in COLUMNS)
        print(f"| {family.name} | {last_step(family / 'train_log.csv')} | {cells} |")
    if floor is not None:
        print("| real vs real (floor) | | " + " | ".join(f"{floor[k]:.4g}" for k in COLUMNS) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
