"""The JAX train step passes the same specifications as the TensorFlow one, on the CPU.

Keras fixes its backend at import, so these run in a subprocess with KERAS_BACKEND=jax.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
pytestmark = pytest.mark.jax

REPO = Path(__file__).resolve().parents[1]


def run_with_backend(backend: str, args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def pytest_on_jax(test_file: str, selected: str) -> str:
    """The ``-k selected`` specifications of ``test_file`` run under ``KERAS_BACKEND=jax``; their output."""
    proc = run_with_backend("jax", ["-m", "pytest", "-q", "-p", "no:cacheprovider", test_file, "-k", selected])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def test_training_specifications_hold_on_the_jax_backend() -> None:
    selected = "resume_continues or planted_nan or loss_falls or same_images_for_the_same_seed or xla_compiled_steps"
    out = pytest_on_jax("tests/test_training.py", selected)
    assert " passed" in out and "failed" not in out


def test_progressive_distillation_rounds_hold_on_the_jax_backend() -> None:
    """A round after the first resets the optimizer and reuses the compiled step on JAX as on TensorFlow."""
    selected = "reset_optimizer_equals_a_new_one or next_round_reuses_the_compiled_step"
    out = pytest_on_jax("tests/test_distill.py", selected)
    assert "2 passed" in out, out[-2000:]


SAMPLE_SCRIPT = """
import sys, numpy as np, keras
from imagegen.sampling import generate_images
images, _ = generate_images(sys.argv[1], 8, seed=5, show_progress=False, sampler="ddim", steps=4, eta=0.0)
np.save(sys.argv[2], images)
print(keras.backend.backend())
"""

TRAIN_SCRIPT = """
import sys
from imagegen.config import load_params
from imagegen.stages.ingest import run_ingest
from imagegen.stages.train import run_train
overrides = ["tracking.enabled=false", "data.image_size=8", "ddpm.base_channels=8", "ddpm.groups=4",
             "ddpm.timesteps=50", "ddpm.steps=3", "train.batch_size=16", "train.sample_every=100",
             "train.jit_compile=false", "sample.steps=4",
             f"train.checkpoints_dir={sys.argv[1]}/ckpt", f"data.processed_dir={sys.argv[1]}/data",
             f"train.reports_dir={sys.argv[1]}/reports"]
params = load_params(None, overrides)
run_train(params, "ddpm", data_dir=run_ingest(params), out_dir=sys.argv[1] + "/model", show_progress=False)
"""


def test_weights_trained_with_jax_sample_identically_under_tensorflow(tmp_path: Path) -> None:
    """.weights.h5 is backend-neutral: a JAX-trained DDPM gives the same images when loaded by TensorFlow."""
    trained = run_with_backend("jax", ["-c", TRAIN_SCRIPT, str(tmp_path)])
    assert trained.returncode == 0, trained.stderr[-4000:]
    model = tmp_path / "model"
    outs = {}
    for backend in ("jax", "tensorflow"):
        proc = run_with_backend(backend, ["-c", SAMPLE_SCRIPT, str(model), str(tmp_path / f"{backend}.npy")])
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert proc.stdout.strip().splitlines()[-1] == backend
        outs[backend] = np.load(tmp_path / f"{backend}.npy")
    diff = np.abs(outs["jax"].astype(int) - outs["tensorflow"].astype(int))
    assert diff.max() <= 2, diff.max()  # uint8 images; float rounding differs between XLA builds
