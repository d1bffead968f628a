"""bench/steps_curve.py: one training run, continued with --resume to each milestone, evaluated at each."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "steps_curve.py"
TINY = [
    "tracking.enabled=false",
    "data.image_size=8",
    "data.test_fraction=0.4",
    "evaluate.feature_epochs=1",
    "evaluate.feature_width=8",
    "evaluate.feature_dim=16",
    "evaluate.n_samples=64",
    "evaluate.kid_subset_size=32",
    "evaluate.kid_subsets=4",
    "vae.base_filters=8",
    "train.batch_size=16",
    "train.checkpoint_every=2",
    "train.sample_every=1000",
]


def imagegen(project: Path, env: dict[str, str], *args: str) -> None:
    overrides = [f"-S{o}" for o in TINY]
    cmd = ["imagegen", *args, *overrides]
    done = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_the_curve_resumes_to_each_milestone_and_evaluates_it(tmp_path: Path) -> None:
    env = {**os.environ, "IMAGEGEN_CACHE_DIR": str(tmp_path / "cache")}
    imagegen(tmp_path, env, "ingest")
    imagegen(tmp_path, env, "train-features")
    out = tmp_path / "curve.csv"
    args = ["--project", str(tmp_path), "--family", "vae", "--steps", "2", "4", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, *(f"-S{o}" for o in TINY)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "steps=2 fid=" in proc.stdout and "steps=4 fid=" in proc.stdout and "floor FID" in proc.stdout
    rows = list(csv.DictReader(out.open()))
    assert [int(r["steps"]) for r in rows] == [2, 4]
    assert all(float(r["fid"]) > 0 for r in rows)
    meta = json.loads((tmp_path / "models" / "vae" / "model.json").read_text())
    run = json.loads((tmp_path / "reports" / "train_vae" / "run.json").read_text())
    assert meta["step"] == 4 and run["resumed_from"].endswith("ckpt-000002.h5")  # continued, not retrained


def test_milestones_must_ascend(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--project", str(tmp_path), "--family", "vae", "--steps", "4", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "ascending order" in proc.stderr
