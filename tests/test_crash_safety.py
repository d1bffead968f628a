"""Crash safety, for real: `imagegen train` subprocesses killed with SIGKILL, then resumed.

- A run killed at a random moment, resumed, killed again *inside a checkpoint write*, and resumed to the end
  finishes with the same weights and the same loss curve (`train_log.csv`) as an uninterrupted run: the step
  sequence is the same because the checkpoints hold the data-stream and noise RNG state.
- A run killed inside the model save leaves the previous model folder byte-for-byte intact (it loads and
  samples); the next save removes the killed run's temporary folder.
- A truncated latest checkpoint: resume falls back to the previous one with a warning.
- A fresh run (no --resume) keeps the earlier run's checkpoints until its own first checkpoint exists, then
  removes them.
- The CLI's stderr carries no TensorFlow/XLA/absl/CUDA start-up lines.

The kills land in the write windows thanks to ``$IMAGEGEN_TEST_PAUSE`` (:func:`imagegen.fileio.pause_for_tests`:
a sleep after the data is written to the temporary file and before it is renamed; inert when unset). The
random kill moments come from ``$IMAGEGEN_CRASH_SEED`` if set, else a fresh seed shown in any failure.
Tiny model (a VAE on 8x8 digits, 24 steps, no XLA) so CI runs this in well under a minute on a free machine.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from imagegen.artifact import load_model, save_model
from imagegen.config import load_params
from imagegen.stages.ingest import run_ingest
from imagegen.training.checkpoint import list_checkpoints
from imagegen.training.families import family_module

STEPS = 24
PARAMS = {
    "seed": 0,
    "data": {"image_size": 8},
    "tracking": {"enabled": False},
    "train": {
        "batch_size": 32,
        "checkpoint_every": 4,
        "keep_checkpoints": 2,
        "log_every": 1,
        "sample_every": 8,
        "grid_size": 4,
        "jit_compile": False,
        # One convolution math for every run: oneDNN fixes it once per process, and one run resumes inside the
        # test's own process, which may have computed convolutions in float32 before.
        "cpu_math": "float32",
    },
    "vae": {"base_filters": 8, "latent_dim": 8, "steps": STEPS},
}
SEED = int(os.environ.get("IMAGEGEN_CRASH_SEED", time.time_ns() % 2**31))
NATIVE_LOG = re.compile(
    r"tensorflow|xla|cuda|cuinit|absl|onednn|cpu_feature_guard|^[IWEF]\d{4} |^\d{4}-\d\d-\d\d ", re.IGNORECASE
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_ingest(
        load_params(None, ["tracking.enabled=false", "data.image_size=8"]), tmp_path_factory.mktemp("data") / "digits"
    )


def workdir(root: Path, digits: Path, **vae: int) -> Path:
    """A project folder: params.yaml (the tiny run) and data/processed/digits."""
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load(yaml.safe_dump(PARAMS))
    params["vae"].update(vae)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    if not (root / "data/processed/digits").exists():
        shutil.copytree(digits, root / "data/processed/digits")
    return root


def train(cwd: Path, *extra: str, pause: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGEGEN_TEST_PAUSE", "IMAGEGEN_VERBOSE")}
    env["PYTHONUNBUFFERED"] = "1"
    if pause:
        env["IMAGEGEN_TEST_PAUSE"] = pause
    return subprocess.Popen(
        [sys.executable, "-m", "imagegen", "train", "vae", *extra],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    return out, err


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            kill(proc)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def checkpoint_temps(folder: Path) -> list[Path]:
    return sorted(folder.glob(".ckpt-*.tmp.h5")) if folder.is_dir() else []


def weights_of(model_dir: Path) -> dict[str, np.ndarray]:
    """Every weight of the model folder, by network and position (layer names play no part)."""
    family = load_model(model_dir).family
    return {
        f"{net}/{i}": np.asarray(w.numpy() if hasattr(w, "numpy") else w)
        for net, model in family.networks.items()
        for i, w in enumerate(model.get_weights())
    }


def loss_curve(cwd: Path) -> list[tuple[int, float]]:
    lines = (cwd / "reports/train_vae/train_log.csv").read_text().splitlines()
    header = lines[0].split(",")
    step, loss = header.index("step"), header.index("loss")
    return [(int(r.split(",")[step]), float(r.split(",")[loss])) for r in lines[1:]]


def file_hashes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, digits: Path) -> tuple[Path, str]:
    """An uninterrupted run: its folder and its stderr."""
    cwd = workdir(tmp_path_factory.mktemp("reference"), digits)
    _, err = finish(train(cwd))
    return cwd, err


# --------------------------------------------------------------------------------------------------


def test_crash_kill_at_random_and_inside_a_checkpoint_write_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, digits: Path, reference: tuple[Path, str]
) -> None:
    rng = random.Random(SEED)
    cwd = workdir(tmp_path / "run", digits)
    ckpt = cwd / "checkpoints/vae"

    # 1. Killed at a random moment once training is under way (checkpoint writes slowed to 0.6 s).
    proc = train(cwd, pause="checkpoint:0.6")
    wait_for(lambda: bool(checkpoint_temps(ckpt)), proc, "the first checkpoint write")
    time.sleep(rng.uniform(0.0, 2.0))
    kill(proc)
    first = [s for s, _ in list_checkpoints(ckpt)]

    # 2. Resumed, and killed inside a checkpoint write: the file being written is a temporary sibling.
    proc = train(cwd, "--resume", pause="checkpoint:30")
    wait_for(lambda: bool(checkpoint_temps(ckpt)), proc, "a checkpoint write after resuming")
    time.sleep(rng.uniform(0.05, 1.0))
    kill(proc)
    assert checkpoint_temps(ckpt), "the kill should have interrupted a checkpoint write"
    assert [s for s, _ in list_checkpoints(ckpt)] == first, f"seed {SEED}"  # nothing half-written in place

    # 3. Resumed to the end: the stale temporary is gone, and the result is the uninterrupted run's.
    finish(train(cwd, "--resume"))
    assert not checkpoint_temps(ckpt)
    ref_dir, _ = reference
    expected, got = weights_of(ref_dir / "models/vae"), weights_of(cwd / "models/vae")
    assert expected.keys() == got.keys() and expected
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-7, err_msg=f"{name}, seed {SEED}")
    curve, ref_curve = loss_curve(cwd), loss_curve(ref_dir)
    assert [s for s, _ in curve] == list(range(1, STEPS + 1))  # the whole curve, each step once
    np.testing.assert_allclose([v for _, v in curve], [v for _, v in ref_curve], rtol=1e-5)


def test_crash_kill_inside_the_model_save_keeps_the_previous_model_whole(
    tmp_path: Path, digits: Path, reference: tuple[Path, str]
) -> None:
    ref_dir, _ = reference
    cwd = workdir(tmp_path / "run", digits, steps=4)
    shutil.copytree(ref_dir / "models", cwd / "models")
    before = file_hashes(cwd / "models/vae")

    proc = train(cwd, pause="save_model:30")  # a new 4-step model, killed while its folder is saved
    temps = lambda: [p for p in (cwd / "models").glob(".vae.*.tmp") if (p / "model.json").is_file()]  # noqa: E731
    wait_for(lambda: bool(temps()), proc, "the model save")
    kill(proc)

    assert file_hashes(cwd / "models/vae") == before
    loaded = load_model(cwd / "models/vae")
    images = family_module("vae").generate(loaded.family, 4, np.random.default_rng(0))
    assert images.shape == (4, 8, 8, 1) and np.isfinite(images).all()

    (stale,) = temps()  # its owner is dead: the next save of that folder removes it
    save_model(loaded.family, cwd / "models/vae", {"step": STEPS})
    assert not stale.exists() and not list((cwd / "models").glob(".vae.*"))


def test_crash_a_truncated_latest_checkpoint_falls_back_to_the_previous_with_a_warning(
    tmp_path: Path, digits: Path, reference: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    from imagegen.stages.train import run_train

    ref_dir, _ = reference
    cwd = workdir(tmp_path / "run", digits)
    shutil.copytree(ref_dir / "checkpoints", cwd / "checkpoints")
    (older, _), (latest, latest_path) = list_checkpoints(cwd / "checkpoints/vae")
    latest_path.write_bytes(latest_path.read_bytes()[:2000])
    params = load_params(cwd / "params.yaml")
    params.train.checkpoints_dir = cwd / "checkpoints"
    params.train.models_dir = cwd / "models"
    params.train.reports_dir = cwd / "reports"

    with caplog.at_level(logging.WARNING, logger="imagegen"):
        run_train(params, "vae", data_dir=digits, resume=True, show_progress=False)

    warning = next(r.getMessage() for r in caplog.records if "unreadable checkpoint" in r.getMessage())
    assert latest_path.name in warning and f"ckpt-{older:06d}.h5" in warning
    meta = load_model(cwd / "models/vae").meta
    run = json.loads((cwd / "reports/train_vae/run.json").read_text())  # run facts live outside the model
    assert run["resumed_from"].endswith(f"ckpt-{older:06d}.h5") and meta["step"] == STEPS
    expected, got = weights_of(ref_dir / "models/vae"), weights_of(cwd / "models/vae")
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_crash_a_fresh_run_keeps_the_earlier_checkpoints_until_its_own_first_one_exists(
    tmp_path: Path, digits: Path, reference: tuple[Path, str]
) -> None:
    ref_dir, _ = reference
    cwd = workdir(tmp_path / "run", digits)
    shutil.copytree(ref_dir / "checkpoints", cwd / "checkpoints")
    ckpt = cwd / "checkpoints/vae"
    earlier = {p.name: p.read_bytes() for _, p in list_checkpoints(ckpt)}

    proc = train(cwd, pause="checkpoint:2")  # no --resume: a fresh run
    wait_for(lambda: bool(checkpoint_temps(ckpt)), proc, "the fresh run's first checkpoint write")
    assert {p.name: p.read_bytes() for _, p in list_checkpoints(ckpt)} == earlier  # still there, mid-write
    names = lambda: [p.name for _, p in list_checkpoints(ckpt)]  # noqa: E731
    wait_for(lambda: names() == ["ckpt-000004.h5"], proc, "the earlier checkpoints' removal")
    kill(proc)  # once its own first checkpoint exists, the fresh run's is the resume state


def test_crash_suite_cli_stderr_has_no_tensorflow_xla_or_cuda_start_up_lines(reference: tuple[Path, str]) -> None:
    _, stderr = reference
    noise = [line for line in stderr.splitlines() if NATIVE_LOG.search(line)]
    assert not noise, noise


# --------------------------------------------------------------------------------------------------
# Leftovers of killed runs: removed by the next run of the stage, only when their owner is gone


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_crash_leftovers_of_a_dead_process_are_removed_and_a_live_runs_are_kept(tmp_path: Path) -> None:
    from imagegen.fileio import _host, remove_stale_temps, write_json

    host = _host()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_dir = tmp_path / f".metrics.json.{dead_pid()}@{host}.abcd1234.tmp"
        live_dir = tmp_path / f".metrics.json.{live.pid}@{host}.efgh5678.tmp"
        other_host = tmp_path / f".metrics.json.{dead_pid()}@elsewhere.ijkl9012.tmp"
        for path in (dead_dir, live_dir, other_host):
            path.write_text("half-written")
        legacy_old = tmp_path / ".metrics.json.mnop3456.tmp"  # no owner recorded: by age only
        legacy_new = tmp_path / ".metrics.json.qrst7890.tmp"
        legacy_old.write_text("x")
        legacy_new.write_text("x")
        os.utime(legacy_old, (time.time() - 2 * 86400,) * 2)
        unrelated = tmp_path / ".other.json.1@x.abcd1234.tmp"
        unrelated.write_text("not ours to judge")

        write_json(tmp_path / "metrics.json", {"ok": True})  # the next write of that output cleans up

        assert not dead_dir.exists() and not legacy_old.exists()
        assert live_dir.exists() and other_host.exists() and legacy_new.exists() and unrelated.exists()
        assert remove_stale_temps(tmp_path) == []  # nothing else is stale now
    finally:
        live.kill()
        live.wait()


def test_crash_leftover_of_a_killed_ingest_is_removed_by_the_next_ingest(tmp_path: Path, digits: Path) -> None:
    from imagegen.fileio import _host

    out = tmp_path / "processed" / "digits"
    half = tmp_path / "processed" / f".digits.{dead_pid()}@{_host()}.zz99yy88.tmp"
    half.mkdir(parents=True)
    (half / "train_images.npy").write_bytes(b"half")
    run_ingest(load_params(None, ["tracking.enabled=false", "data.image_size=8"]), out)
    assert not half.exists() and (out / "manifest.json").is_file()


def test_crash_between_the_two_renames_of_a_folder_swap_the_previous_output_comes_back(tmp_path: Path) -> None:
    from imagegen.fileio import _host, atomic_dir

    swapped_out = tmp_path / f".model.{dead_pid()}@{_host()}.old"  # dest renamed away, the new one not yet in
    swapped_out.mkdir()
    (swapped_out / "model.json").write_text("{}")
    with atomic_dir(tmp_path / "other", kind="model"):
        pass  # a swap of another output does not touch it
    assert swapped_out.exists()
    from imagegen.fileio import remove_stale_temps

    remove_stale_temps(tmp_path, "model")
    assert (tmp_path / "model" / "model.json").read_text() == "{}" and not swapped_out.exists()


def test_crash_resume_on_another_dataset_is_refused_not_continued(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint records the content hash of its data: `--resume --data <other dataset of the same shape>`
    stops with one line instead of continuing on data the run never started with."""
    from typer.testing import CliRunner

    from imagegen.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(tmp_path / "cache"))
    tiny = ["tracking.enabled=false", "data.image_size=8", "vae.base_filters=4", "vae.steps=2"]
    tiny += ["train.batch_size=16", "train.jit_compile=false", "train.checkpoint_every=1"]

    def cli(*args: str) -> object:
        return CliRunner().invoke(app, [*args, *(item for s in tiny for item in ("-S", s))])

    assert cli("ingest", "--out", "data/a").exit_code == 0
    other = cli("ingest", "--out", "data/b", "-S", "data.test_fraction=0.2")  # same shape, other content
    assert other.exit_code == 0, other.output
    assert cli("train", "vae", "--data", "data/a").exit_code == 0
    before = file_hashes(tmp_path / "models" / "vae")
    result = cli("train", "vae", "--data", "data/b", "--resume", "-S", "vae.steps=4")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "trained on dataset" in line and "--data" in line, line
    assert file_hashes(tmp_path / "models" / "vae") == before
