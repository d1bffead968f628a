"""An export is reproducible byte for byte: the same model exported by two fresh ``imagegen export`` processes
gives the same files (the SavedModel's protos, checkpoint and fingerprint, every TFLite flatbuffer and
``metrics.json``), so DVC can skip what follows a re-run and anyone can check a reproduction by its hashes.

What varies between runs (latencies) is measured but decides nothing that is written into the export folder:
the int8 kind kept is picked by parity alone.

A 3-step VAE on 8x8 digits keeps the two exports to seconds of work each, beside TensorFlow's start-up.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imagegen.export.tflite import pick_int8
from tests.test_registry import tiny_vae

tf = pytest.importorskip("tensorflow")

EXPORT_PARAMS = ("tracking.enabled=false", "export.parity_n=6", "export.latency_repeats=3", "export.calibration_n=16")


def export_in_fresh_process(model_dir: Path, out: Path, cwd: Path, *extra: str) -> Path:
    """``python -m imagegen export`` of ``model_dir`` into ``out`` in a new process (MLflow off); ``extra``:
    more ``key=value`` params."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    overrides = [arg for param in (*EXPORT_PARAMS, *extra) for arg in ("-S", param)]
    report = cwd / f"report_{out.name}"
    command = ["export", "--model", str(model_dir), "--out", str(out), "--report", str(report), *overrides]
    done = subprocess.run(
        [sys.executable, "-m", "imagegen", *command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def file_digests(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_two_fresh_exports_of_one_model_write_byte_identical_folders_that_still_serve(tmp_path: Path) -> None:
    """The second export converts its TFLite files in worker processes (all but the calibrated full-integer
    int8, which stays in the exporting process): a worker writes the bytes the exporting process would."""
    model_dir = tiny_vae(tmp_path / "model")
    first = export_in_fresh_process(model_dir, tmp_path / "first", tmp_path, "export.conversion_workers=0")
    second = export_in_fresh_process(model_dir, tmp_path / "second", tmp_path, "export.conversion_workers=3")

    digests = file_digests(first)
    assert {"savedmodel/saved_model.pb", "savedmodel/fingerprint.pb", "metrics.json"} <= set(digests)
    assert any(name.startswith("savedmodel/variables/") for name in digests)
    assert {"model_float32.tflite", "model_float16.tflite", "model_int8.tflite"} <= set(digests)
    again = file_digests(second)
    assert sorted(again) == sorted(digests)
    assert [name for name in digests if again[name] != digests[name]] == []  # names the files that differ

    saved = str(first / "savedmodel")
    serve = tf.saved_model.load(saved).signatures["serving_default"]
    z = np.random.default_rng(0).standard_normal((3, *serve.structured_input_signature[1]["z"].shape[1:]))
    images = serve(z=tf.constant(z, tf.float32))["images"].numpy()
    assert images.dtype == np.uint8 and images.shape == (3, 8, 8, 1)

    # The fingerprint's hashes are those TensorFlow computes from the files as written.
    from tensorflow.core.protobuf import fingerprint_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    recomputed = fingerprint_pb2.FingerprintDef.FromString(fingerprinting.CreateFingerprintDef(saved))
    assert tf.saved_model.experimental.read_fingerprint(saved) == recomputed


def entry(latency_ms: float, passed: bool = True) -> dict:
    return {"latency_ms_per_image": latency_ms, "passed": passed, "max_abs_error": 0, "ssim": 1.0, "bytes": 1}


@pytest.mark.parametrize(("full_ms", "dynamic_ms"), [(0.5, 7.5), (0.95, 1.0), (9.0, 1.0)])
def test_the_int8_kind_kept_depends_on_parity_never_on_latency(full_ms: float, dynamic_ms: float) -> None:
    kind, why = pick_int8({"dynamic_range": entry(dynamic_ms), "full_integer": entry(full_ms)})
    assert kind == "full_integer" and str(full_ms) not in why and str(dynamic_ms) not in why
    assert pick_int8({"dynamic_range": entry(dynamic_ms), "full_integer": entry(full_ms, passed=False)}) == (
        "dynamic_range",
        "the only kind that passes parity (full_integer failed)",
    )
    without_latency = {"dynamic_range": {"passed": True}, "full_integer": {"passed": True}}
    assert pick_int8(without_latency) == (kind, why)
