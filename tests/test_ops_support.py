"""Support for the operations tests (no tests here): a fresh project copy on tiny params, and real
server processes on loopback ports that are always stopped, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Every stage of the real graph, sized to run in seconds each on 2 CPU cores. Models of 3 steps are collapsed by
# construction, so the collapse thresholds are 0: otherwise the LDM would rightly refuse its VAE.
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "data": {"image_size": 8},
    "train": {
        "batch_size": 16,
        "jit_compile": False,
        "grid_size": 4,
        "log_every": 1,
        "min_sample_diversity": 0.0,
        "min_sample_contrast": 0.0,
    },
    "dcgan": {"steps": 3, "base_filters": 4, "latent_dim": 8},
    "vae": {"steps": 3, "base_filters": 4, "latent_dim": 4, "min_kl_per_image": 0.0},
    "ddpm": {"steps": 3, "base_channels": 8, "groups": 4},
    "ldm": {"steps": 3},
    "stylegan2": {"steps": 3, "base_channels": 4, "max_channels": 8, "latent_dim": 8, "w_dim": 8},
    "sample": {"steps": 4, "n": 8},
    "distill": {
        "start_steps": 4,
        "target_steps": 2,
        "steps_per_round": 2,
        "compare_n": 8,
        "speed_n": 8,
    },
    "evaluate": {
        "feature_epochs": 1,
        "feature_width": 8,
        "feature_dim": 16,
        "n_samples": 64,
        "kid_subsets": 5,
        "kid_subset_size": 32,
        "batch_size": 64,
    },
    "export": {
        "ddpm_steps": 2,
        "parity_n": 4,
        "latency_repeats": 2,
        "tflite_variants": ["float32"],
    },
}


def _project_files() -> list[str]:
    """Tracked and not-ignored files of the repository under test (its working-tree state), minus tests."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    return [p for p in out.stdout.decode().split("\0") if p and not p.startswith("tests/")]


def git(args: list[str], cwd: Path) -> str:
    cmd = ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True).stdout


def make_project(dest: Path, tiny: Mapping[str, Mapping[str, Any]] = TINY_PARAMS) -> Path:
    """A clone-like copy of the project at ``dest`` with ``tiny`` written into its params.yaml, committed."""
    for rel in _project_files():
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for section, values in tiny.items():
        params[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(["init", "-q"], dest)
    git(["add", "-A"], dest)
    git(["commit", "-qm", "project copy with tiny params"], dest)
    return dest


def clean_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of the project's processes: this venv first on PATH, caches in ``root``'s parent,
    no proxies (loopback servers), no tracking URI or data folder inherited from the caller."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
        and not k.startswith(("PREFECT_", "MLFLOW_", "IMAGEGEN_"))
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["IMAGEGEN_CACHE_DIR"] = str(root.parent / "cache")
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, env: Mapping[str, str], timeout: float = 600) -> str:
    """A command that must succeed; its output (stdout + stderr) is returned, and shown when it fails."""
    proc = subprocess.run(cmd, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def dvc(args: list[str], cwd: Path, env: Mapping[str, str], timeout: float = 900) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd, env, timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 1.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Processes:
    """Background processes, each in its own process group with its output in a log file; ``stop_all``
    ends every group (SIGTERM, then SIGKILL) and is called by the fixture's ``finally``."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen]] = []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str], cwd: Path, env: Mapping[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        for _, proc in reversed(self.started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in reversed(self.started):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):  # leftovers of the group (flow-run children)
                os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def processes(logs: Path) -> Iterator[Processes]:
    procs = Processes(logs)
    try:
        yield procs
    finally:
        procs.stop_all()


def start_prefect_server(procs: Processes, home: Path) -> tuple[str, dict[str, str]]:
    """``prefect server start`` on a free loopback port with its own SQLite database and the scheduler
    looping every 2 s; returns the API URL and the environment a client of it needs."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    home.mkdir(parents=True, exist_ok=True)
    settings = {
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "true",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    env = clean_env(home, **settings)
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = procs.start("prefect-server", cmd, home, env)

    def healthy() -> bool:
        import httpx

        assert server.poll() is None, "prefect server exited:\n" + procs.log("prefect-server")
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 180, "the Prefect server's /api/health")
    client_env = {
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(home / "client"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    }
    return api, client_env
