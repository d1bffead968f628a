"""MLflow over HTTP: a real ``mlflow server`` (loopback, SQLite backend, proxied artifacts in tmp).

What works with the SQLite file works against the server: tracking, registering, promoting, and
loading ``models:/NAME@champion`` in a fresh process. A server that does not answer is one line and
exit 2, fast."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_registry import GOOD_EVAL, PARITY_OK, of_model, store_params, tiny_vae


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy after {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on a free loopback port; stopped (its whole process group) also on
    failure."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                f"sqlite:///{root / 'backend.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--workers",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,
        )
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def _child_env(url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(MLFLOW_TRACKING_URI=url, IMAGEGEN_CACHE_DIR=str(tmp_path / "cache"), COLUMNS="400")
    return env


def test_register_promote_and_load_the_champion_in_a_fresh_process(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_proxy: None
) -> None:
    from mlflow.tracking import MlflowClient

    from imagegen.registry import register

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    model_dir = tiny_vae(tmp_path)
    name, version = register(
        store_params(mlflow_server), model_dir, of_model(GOOD_EVAL, model_dir), of_model(PARITY_OK, model_dir)
    )
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"  # MLflow's own retries were capped

    env = _child_env(mlflow_server, tmp_path)
    promote = subprocess.run(
        [sys.executable, "-m", "imagegen", "promote", name],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert promote.returncode == 0, promote.stdout + promote.stderr
    assert f"v{version}: promoted" in promote.stdout

    load = (
        "import mlflow, pandas as pd, sys\n"
        f"m = mlflow.pyfunc.load_model('models:/{name}@champion')\n"
        "images = m.predict(pd.DataFrame({'n': [4], 'seed': [0]}))\n"
        "print('IMAGES', images.shape, images.dtype)\n"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", load],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "IMAGES (4, 8, 8, 1) uint8" in fresh.stdout, fresh.stderr[-3000:]

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == version and champion.tags["promotion.decision"] == "promoted"
    run = client.get_run(champion.tags["source.run_id"])
    assert run.data.tags["imagegen.stage"] == "register" and run.info.status == "FINISHED"


def test_an_unreachable_tracking_server_fails_fast_with_one_line(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**_child_env(dead, tmp_path), "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagegen",
            "train",
            "vae",
            "-S",
            "vae.steps=3",
            "-S",
            "data.image_size=8",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert dead in lines[0] and "-S tracking.enabled=false" in lines[0]
    assert elapsed < 15, f"took {elapsed:.1f} s"  # a dead server is named within 15 s
    assert not (tmp_path / "models").exists()  # failed before doing the work
