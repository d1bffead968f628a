"""The MLflow store, the served model and what a user sees on the terminal, on real components.

A store MLflow cannot open because of its schema revision is one line naming it; creating a new store
prints none of MLflow's or alembic's notices; the served pyfunc answers an empty request with zero images
and says which weights it serves; a TFLite interpreter allocates without the runtime's XNNPACK notice; an
unknown prompt word is one ``warning:`` line. Commands run as ``python -m imagegen`` in a fresh process, so
the real stdout/stderr (native writes included) are what the assertions read. ``pytest -k bad_input``
selects them."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.test_registry import tiny_vae

UNKNOWN_REVISION = "ffffffffffff"
FIRST_REVISION = "451aebb31d03"  # MLflow's first schema revision: every later MLflow knows it as older
MLFLOW_NOTICES = ("Creating initial MLflow database tables", "Updating database tables", "alembic", "INFO")


def imagegen(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m imagegen ARGS`` in a fresh process with the user's default settings (quiet, no MLflow env)."""
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_LOGGING_LEVEL")}
    base.pop("IMAGEGEN_VERBOSE", None)
    return subprocess.run(
        [sys.executable, "-m", "imagegen", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, "COLUMNS": "400", "IMAGEGEN_CACHE_DIR": str(cwd / "cache"), **env},
        timeout=600,
    )


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def mlflow_store(db: Path, revision: str | None = None) -> str:
    """A real MLflow SQLite store at ``db`` (created by MLflow), its schema revision set to ``revision``."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{db}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()
    if revision is not None:
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE alembic_version SET version_num = ?", (revision,))
        conn.close()
    return uri


# --------------------------------------------------------------------------------------------------
# The store's schema revision


@pytest.mark.parametrize("command", ["register", "promote"])
def test_bad_input_a_store_at_a_revision_unknown_to_this_mlflow_is_one_line_naming_it(
    tmp_path: Path, command: str
) -> None:
    db = tmp_path / "mlflow.db"
    uri = mlflow_store(db, UNKNOWN_REVISION)
    args = {
        "register": ["register", "--model", "model", "--evaluation", "metrics.json"],
        "promote": ["promote", "imagegen-vae-digits"],
    }[command]
    result = imagegen(*args, "-S", f"tracking.uri={uri}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    [line] = lines(result.stderr)
    assert line.startswith("error: MLflow store") and str(db) in line
    assert f"schema revision {UNKNOWN_REVISION} is unknown to MLflow" in line
    assert "upgrade mlflow" in line and "mlflow db upgrade" in line


def test_bad_input_a_store_older_than_this_mlflow_is_one_line_saying_mlflow_db_upgrade(tmp_path: Path) -> None:
    uri = mlflow_store(tmp_path / "mlflow.db", FIRST_REVISION)
    result = imagegen("promote", "imagegen-vae-digits", "-S", f"tracking.uri={uri}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    [line] = lines(result.stderr)
    assert "Traceback" not in result.stderr and uri in line
    assert f"schema revision {FIRST_REVISION} is older" in line and f"mlflow db upgrade {uri}" in line


def test_the_store_check_knows_every_revision_of_the_installed_mlflow(tmp_path: Path) -> None:
    from mlflow.store.db.utils import _get_latest_schema_revision

    from imagegen.tracking.store import TrackingStoreError, check_sqlite, mlflow_schema_revisions

    known, heads = mlflow_schema_revisions()
    assert heads == {_get_latest_schema_revision()} and FIRST_REVISION in known
    db = tmp_path / "mlflow.db"
    mlflow_store(db)
    check_sqlite(db)  # a store MLflow just made passes
    mlflow_store(db, UNKNOWN_REVISION)
    with pytest.raises(TrackingStoreError, match=f"{UNKNOWN_REVISION} is unknown"):
        check_sqlite(db)


# --------------------------------------------------------------------------------------------------
# A new store is made silently


def test_creating_a_new_store_prints_none_of_mlflows_or_alembics_notices(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    result = imagegen("promote", "no-such-model", "-S", f"tracking.uri=sqlite:///{db}", cwd=tmp_path)
    assert db.is_file()  # the command did create the store
    assert result.returncode == 2, result.stderr  # the model has no challenger: that is all the user reads
    assert lines(result.stdout) == []
    [line] = lines(result.stderr)
    assert line.startswith("error: registered model 'no-such-model' has no 'challenger' version"), line
    assert not any(notice in result.stderr for notice in MLFLOW_NOTICES), result.stderr

    verbose = imagegen(
        "--verbose", "promote", "no-such-model", "-S", f"tracking.uri=sqlite:///{tmp_path / 'v.db'}", cwd=tmp_path
    )
    assert "Creating initial MLflow database tables" in verbose.stderr  # --verbose keeps them


# --------------------------------------------------------------------------------------------------
# The served model


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """The registered pyfunc of a tiny trained VAE, saved as MLflow saves it and loaded back; and the model
    folder it serves."""
    import mlflow.pyfunc

    from imagegen.registry.pyfunc import SAMPLER_PARAMS, ImagegenModel

    root = tmp_path_factory.mktemp("served")
    model_dir = tiny_vae(root)
    mlflow.pyfunc.save_model(
        str(root / "pyfunc"),
        python_model=ImagegenModel(sample={}, backend="tensorflow"),
        artifacts={"model_dir": str(model_dir)},
        input_example=([{"n": 2, "seed": 0}], dict(SAMPLER_PARAMS)),
    )
    return mlflow.pyfunc.load_model(str(root / "pyfunc")), model_dir


def test_bad_input_an_empty_request_list_is_answered_with_zero_images(served: tuple[Any, Path]) -> None:
    model, _ = served
    images = model.predict([])
    assert images.shape == (0, 8, 8, 1) and images.dtype == np.uint8
    assert model.predict([{"n": 2, "seed": 3}]).shape == (2, 8, 8, 1)


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
def test_bad_input_the_scoring_server_answers_an_empty_inputs_list_with_no_predictions(
    served: tuple[Any, Path],
) -> None:
    from mlflow.pyfunc import scoring_server
    from starlette.testclient import TestClient

    model, _ = served
    client = TestClient(scoring_server.init(model))  # the app `mlflow models serve` runs, in-process
    empty = client.post("/invocations", json={"inputs": []})
    assert empty.status_code == 200, empty.text
    assert empty.json() == {"predictions": []} and "Traceback" not in empty.text
    one = client.post("/invocations", json={"inputs": [{"n": 1, "seed": 0}]})
    assert one.status_code == 200 and np.asarray(one.json()["predictions"]).shape == (1, 8, 8, 1)


def test_the_served_model_reports_the_digest_of_the_weights_it_serves(served: tuple[Any, Path]) -> None:
    model, model_dir = served
    recorded = json.loads((model_dir / "model.json").read_text())["weights_digest"]
    assert recorded.startswith("sha256:")
    assert model.unwrap_python_model().weights_digest == recorded


def test_a_model_folder_without_a_digest_serves_with_none() -> None:
    from imagegen.registry.pyfunc import ImagegenModel, weights_digest

    assert ImagegenModel().weights_digest is None  # before load_context
    assert weights_digest({"family": "vae"}) is None and weights_digest({"weights_digest": "sha256:ab"}) == "sha256:ab"


# --------------------------------------------------------------------------------------------------
# TFLite's runtime notice

ALLOCATE = """
import sys
from imagegen.export.tflite import make_interpreter
interpreter = make_interpreter(sys.argv[1])
interpreter.allocate_tensors()
interpreter.invoke()
print("ran")
"""


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-op TFLite flatbuffer (x * 2 + 1, ReLU), enough for XNNPACK to be created."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def f(x: Any) -> dict[str, Any]:
        return {"y": tf.nn.relu(x * 2.0 + 1.0)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    path.write_bytes(converter.convert())
    return path


def test_a_tflite_interpreter_allocates_without_the_runtimes_xnnpack_notice(tiny_tflite: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "IMAGEGEN_VERBOSE"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"  # TensorFlow's import notices; the XNNPACK one does not read it

    def run(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", ALLOCATE, str(tiny_tflite)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**env, **extra},
            timeout=300,
        )

    quiet = run()
    assert quiet.returncode == 0 and quiet.stdout == "ran\n", quiet.stderr
    assert quiet.stderr == ""
    verbose = run(IMAGEGEN_VERBOSE="1")  # the runtime still announces it (else this test proves nothing)
    assert "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." in verbose.stderr


def test_the_native_stderr_filter_passes_every_other_line_on_in_order() -> None:
    script = (
        "import os\n"
        "from imagegen.quiet import native_stderr_filtered\n"
        "with native_stderr_filtered():\n"
        "    os.write(2, b'before\\nINFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\nERROR: kept\\n')\n"
        "os.write(2, b'after\\n')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "IMAGEGEN_VERBOSE"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and done.stderr == "before\nERROR: kept\nafter\n"


# --------------------------------------------------------------------------------------------------
# An unknown prompt word


@pytest.fixture(scope="module")
def caption_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A caption-conditioned DDPM on 8x8 digits, trained two steps: a real model folder with a vocabulary."""
    from imagegen.config import load_params
    from imagegen.stages.ingest import run_ingest
    from imagegen.stages.train import run_train

    root = tmp_path_factory.mktemp("caption")
    params = load_params(
        None,
        [
            "tracking.enabled=false",
            "data.caption_template=a photo of a {class}",
            "data.image_size=8",
            f"data.processed_dir={root}/data",
            f"train.checkpoints_dir={root}/ckpt",
            f"train.reports_dir={root}/reports",
            "ddpm.captions=true",
            "ddpm.steps=2",
            "ddpm.base_channels=8",
            "ddpm.channel_mults=[1,2]",
            "ddpm.cross_attention_resolutions=[4]",
            "ddpm.text_width=16",
            "ddpm.text_layers=1",
            "ddpm.timesteps=20",
            "train.batch_size=16",
            "train.jit_compile=false",
            "train.sample_every=100000",
            "train.checkpoint_every=100000",
            "train.grid_size=2",
            "sample.steps=2",
        ],
    )
    return run_train(params, "ddpm", data_dir=run_ingest(params), out_dir=root / "ddpm", show_progress=False)


def test_an_unknown_prompt_word_is_one_warning_line_without_a_source_line(caption_model: Path, tmp_path: Path) -> None:
    args = ["sample", "--model", str(caption_model), "--out", "out", "--n", "1", "--prompt", "a photo of a zebra"]
    result = imagegen(*args, "-S", "tracking.enabled=false", "-S", "sample.steps=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "UserWarning" not in result.stderr and "warnings.warn" not in result.stderr
    warned = [line for line in lines(result.stderr) if "zebra" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: caption words not in the model's vocabulary")
    assert lines(result.stderr) == warned, result.stderr
