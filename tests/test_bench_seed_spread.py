"""bench/seed_spread.py: one training and evaluation per seed and setting, none of them written into the project."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "seed_spread.py"
TINY = {
    "tracking": {"enabled": False},
    "data": {"image_size": 8, "test_fraction": 0.4},
    "evaluate": {
        "feature_epochs": 1,
        "feature_width": 8,
        "feature_dim": 16,
        "n_samples": 64,
        "kid_subset_size": 32,
        "kid_subsets": 4,
    },
    "vae": {"base_filters": 8, "steps": 2},
    "train": {"batch_size": 16, "checkpoint_every": 1, "sample_every": 1000},
}


def test_each_seed_and_setting_is_trained_and_evaluated_outside_the_project(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(TINY))
    env = {**os.environ, "IMAGEGEN_CACHE_DIR": str(tmp_path / "cache")}
    for command in (["ingest"], ["train-features"]):
        done = subprocess.run(["imagegen", *command], cwd=project, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    before = {p.relative_to(project) for p in project.rglob("*")}
    out = tmp_path / "spread.csv"
    settings = ["train.cpu_math=float32", "train.cpu_math=float32 vae.beta=1.0"]
    args = ["--project", str(project), "--family", "vae", "--seeds", "0", "1", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, *(a for s in settings for a in ("--setting", s))],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert [(r["seed"], r["setting"]) for r in rows] == [(seed, s) for seed in ("0", "1") for s in settings]
    assert all(float(r["fid"]) > 0 for r in rows)
    assert f"{settings[0]}: mean FID" in proc.stdout
    # No report, checkpoint or model of the runs lands in the project (only the CSV asked for).
    assert {p.relative_to(project) for p in project.rglob("*")} - before == set()
