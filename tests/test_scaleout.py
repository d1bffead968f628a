"""Data-parallel training (JAX SPMD over a device mesh) means the same as training on one device.

The runs happen in a subprocess with ``KERAS_BACKEND=jax`` and ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
(four simulated CPU devices). The same global batch and seed give the same losses on 1 and on 4 devices for
20 steps, and a checkpoint written on 4 devices resumes on 1 (and the other way round) with the losses of
an uninterrupted run.

Tolerance: only the order of float32 additions differs (a per-device partial sum, then the all-reduce), so
losses agree to rounding, amplified a little by 20 optimiser steps: ``rtol=1e-4, atol=1e-5`` (float32's
machine epsilon is 1.2e-7; the observed differences are printed by the subprocess on failure).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
pytestmark = pytest.mark.jax

REPO = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-4, 1e-5
STEPS = 20

SCRIPT = r"""
import json, sys
from pathlib import Path
import jax, numpy as np
from imagegen.config import load_params
from imagegen.data.loader import BatchStream
from imagegen.data.processed import Dataset, Split, ProcessedDataset, write_processed
from imagegen.stages.train import seed_everything
from imagegen.training.families import build_family
from imagegen.training.loop import Trainer

family_name, tmp, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
assert jax.local_device_count() == 4, jax.devices()
rng = np.random.default_rng(0)
split = Split(rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8), rng.integers(0, 3, 64).astype(np.int64))
write_processed(Dataset("toy", {"train": split, "test": split}, ["a", "b", "c"], "test"), tmp / "data")
dataset = ProcessedDataset.open(tmp / "data")
small = {
    "ddpm": ["ddpm.base_channels=8", "ddpm.groups=4", "ddpm.timesteps=50", "ddpm.channel_mults=[1]"],
    "dcgan": ["dcgan.base_filters=8", "dcgan.latent_dim=8"],
    "vae": ["vae.base_filters=8", "vae.latent_dim=4"],
}[family_name]
half = steps // 2


def train(devices, ckpt_dir, resume_from=None):
    params = load_params(None, ["tracking.enabled=false", "data.image_size=8", "train.batch_size=16",
                                "train.log_every=1", f"train.checkpoint_every={half}", "train.sample_every=1000",
                                "train.keep_checkpoints=5", f"train.devices={devices}", *small])
    seed_everything(params.seed)
    family = build_family(family_name, params, dataset.image_shape, dataset.num_classes)
    stream = BatchStream(dataset.split("train"), params.train.batch_size, params.seed)
    trainer = Trainer(family, stream, params.train, params.seed, tmp / ckpt_dir, show_progress=False)
    if resume_from is not None:
        trainer.resume(tmp / resume_from / f"ckpt-{half:06d}.h5")
    result = trainer.fit(steps)
    mesh = 1 if getattr(trainer.stepper, "parallel", None) is None else trainer.stepper.parallel.mesh.size
    rows = [{k: v for k, v in row.items() if k != "images_per_sec"} for row in result.history]
    # Every network's weights after training (EMA and BatchNorm statistics included): per-variable means.
    weights = {n: [float(np.mean(np.asarray(w, dtype=np.float64))) for w in m.weights]
               for n, m in sorted(family.networks.items())}
    return {"mesh": mesh, "rows": rows, "weights": weights}


out = {"one": train(1, "one"), "four": train(4, "four")}
out["four_then_one"] = train(1, "four_then_one", resume_from="four")
out["one_then_four"] = train(4, "one_then_four", resume_from="one")
print("RESULT " + json.dumps(out))
"""


def run_jax(args: list[str], devices: int = 4, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def losses(rows: list[dict[str, float]]) -> np.ndarray:
    """(steps, metrics) in a fixed metric order."""
    keys = sorted(k for k in rows[0] if k != "step")
    return np.array([[row[k] for k in keys] for row in rows], dtype=np.float64)


@pytest.mark.parametrize("family", ["ddpm", "dcgan"])
def test_four_devices_match_one_and_checkpoints_move_between_them(family: str, tmp_path: Path) -> None:
    proc = run_jax(["-c", SCRIPT, family, str(tmp_path), str(STEPS)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    runs = json.loads(line.removeprefix("RESULT "))
    assert runs["one"]["mesh"] == 1 and runs["four"]["mesh"] == 4  # really 4 devices in the mesh
    assert runs["four_then_one"]["mesh"] == 1 and runs["one_then_four"]["mesh"] == 4

    one, four = losses(runs["one"]["rows"]), losses(runs["four"]["rows"])
    assert one.shape == four.shape == (STEPS, one.shape[1])
    diff = np.abs(one - four).max()
    np.testing.assert_allclose(four, one, rtol=RTOL, atol=ATOL, err_msg=f"max abs diff {diff:.3g}")

    # The weights too, EMA (DDPM's unet_ema) and BatchNorm moving statistics (DCGAN) included.
    assert runs["one"]["weights"].keys() == runs["four"]["weights"].keys()
    for name, values in runs["one"]["weights"].items():
        np.testing.assert_allclose(runs["four"]["weights"][name], values, rtol=RTOL, atol=ATOL, err_msg=name)

    # Resumed at step STEPS/2 on the other device count: the remaining steps match the uninterrupted runs.
    half = STEPS // 2
    four_then_one, one_then_four = losses(runs["four_then_one"]["rows"]), losses(runs["one_then_four"]["rows"])
    assert [r["step"] for r in runs["four_then_one"]["rows"]] == list(range(half + 1, STEPS + 1))
    np.testing.assert_allclose(four_then_one, four[half:], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(one_then_four, one[half:], rtol=RTOL, atol=ATOL)


def test_training_specifications_hold_on_four_devices() -> None:
    """The loop's own specifications (exact resume, the NaN guard keeping the last good checkpoint) with
    ``train.devices: auto`` seeing 4 devices: every run there is data-parallel. (Loss falling is covered by
    the 1-vs-4 equality above; running those specs too would take longer than the test's time limit.)"""
    selected = "resume_continues or planted_nan"
    proc = run_jax(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_training.py", "-k", selected])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


MULTIHOST_SCRIPT = r"""
import json, os, sys
from pathlib import Path
from imagegen.training.distributed import initialize_multihost
joined = initialize_multihost()
import jax, numpy as np
from imagegen.config import load_params
from imagegen.data.loader import BatchStream
from imagegen.data.processed import Dataset, Split, ProcessedDataset, write_processed
from imagegen.stages.train import seed_everything
from imagegen.training.families import build_family
from imagegen.training.loop import Trainer

family_name, tmp, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
pid = jax.process_index()
data = tmp / f"data{pid}"
rng = np.random.default_rng(0)
split = Split(rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8), rng.integers(0, 3, 64).astype(np.int64))
write_processed(Dataset("toy", {"train": split, "test": split}, ["a", "b", "c"], "test"), data)
dataset = ProcessedDataset.open(data)
small = {"ddpm": ["ddpm.base_channels=8", "ddpm.groups=4", "ddpm.timesteps=50", "ddpm.channel_mults=[1]"],
         "dcgan": ["dcgan.base_filters=8", "dcgan.latent_dim=8"]}[family_name]
params = load_params(None, ["tracking.enabled=false", "data.image_size=8", "train.batch_size=16",
                            "train.log_every=1", f"train.checkpoint_every={steps}", "train.sample_every=1000",
                            f"train.devices={sys.argv[4]}", *small])
seed_everything(params.seed)
family = build_family(family_name, params, dataset.image_shape, dataset.num_classes)
stream = BatchStream(dataset.split("train"), 16, params.seed)
trainer = Trainer(family, stream, params.train, params.seed, tmp / "ckpt", show_progress=False)
result = trainer.fit(steps)
print("RESULT " + json.dumps({"pid": pid, "procs": jax.process_count(), "devices": jax.device_count(),
      "rows": stream.rows and [stream.rows.start, stream.rows.stop],
      "ckpts": sorted(p.name for p in (tmp / "ckpt").glob("*.h5")),
      "loss": [r[k] for r in result.history for k in sorted(r) if k not in ("step", "images_per_sec")]}))
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_of_two_devices_train_like_one_device_and_only_process_0_writes(tmp_path: Path) -> None:
    """Multi-host on one machine: 2 processes joined by jax.distributed (the JAX_* variables), 2 simulated
    devices each, a 4-device mesh; each process feeds only its own rows of every global batch."""
    steps = 6
    single = run_jax(["-c", MULTIHOST_SCRIPT, "dcgan", str(tmp_path / "single"), str(steps), "1"], devices=1)
    assert single.returncode == 0, single.stderr[-4000:]
    port = free_port()
    procs = []
    for pid in (0, 1):
        env = {
            **os.environ,
            "KERAS_BACKEND": "jax",
            "JAX_PLATFORMS": "cpu",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(pid),
        }
        args = [sys.executable, "-c", MULTIHOST_SCRIPT, "dcgan", str(tmp_path / "multi"), str(steps), "2"]
        procs.append(
            subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    try:
        outs = [p.communicate(timeout=900) for p in procs]
    finally:
        for p in procs:
            p.kill()
    results = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
        results.append(json.loads(next(x for x in out.splitlines() if x.startswith("RESULT ")).removeprefix("RESULT ")))
    expected = json.loads(
        next(x for x in single.stdout.splitlines() if x.startswith("RESULT ")).removeprefix("RESULT ")
    )
    assert [(r["procs"], r["devices"], r["rows"]) for r in results] == [(2, 4, [0, 8]), (2, 4, [8, 16])]
    for r in results:
        np.testing.assert_allclose(r["loss"], expected["loss"], rtol=RTOL, atol=ATOL)
    assert sorted(p.name for p in (tmp_path / "multi" / "ckpt").iterdir()) == [f"ckpt-{steps:06d}.h5"]


TF_SCRIPT = r"""
from imagegen.errors import ConfigError
from imagegen.training.distributed import resolve_devices
assert resolve_devices("auto", 64, "tensorflow") == 1
try:
    resolve_devices(2, 64, "tensorflow")
except ConfigError as exc:
    print("REFUSED", exc)
"""


def test_tensorflow_backend_refuses_more_than_one_device() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", TF_SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REFUSED train.devices = 2" in proc.stdout and "KERAS_BACKEND=jax" in proc.stdout


BAD_BATCH_SCRIPT = r"""
from imagegen.errors import ConfigError
from imagegen.training.distributed import resolve_devices
assert resolve_devices("auto", 12, "jax") == 4   # auto: every device jax reports
assert resolve_devices(2, 6, "jax") == 2
for devices, batch in (("auto", 10), (8, 64)):
    try:
        resolve_devices(devices, batch, "jax")
    except ConfigError as exc:
        print("ERROR", exc)
"""


def test_batch_size_must_divide_over_the_devices() -> None:
    proc = run_jax(["-c", BAD_BATCH_SCRIPT], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = [x for x in proc.stdout.splitlines() if x.startswith("ERROR")]
    assert len(errors) == 2
    assert "train.batch_size = 10" in errors[0] and "train.devices" in errors[0] and "4 devices" in errors[0]
    assert "train.devices = 8" in errors[1] and "only 4" in errors[1]


def test_multihost_settings_come_from_three_environment_variables() -> None:
    from imagegen.errors import ConfigError
    from imagegen.training.distributed import multihost_settings

    assert multihost_settings({}) is None
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert multihost_settings(env) == ("10.0.0.1:1234", 2, 1)
    with pytest.raises(ConfigError, match="missing JAX_PROCESS_ID"):
        multihost_settings({k: v for k, v in env.items() if k != "JAX_PROCESS_ID"})
    with pytest.raises(ConfigError, match="JAX_PROCESS_ID=2"):
        multihost_settings({**env, "JAX_PROCESS_ID": "2"})
