"""A stage's MLflow client in a child process, started before the stage imports TensorFlow.

Importing mlflow and opening its store costs every stage process 1.3-1.9 s of single-threaded Python (mlflow,
pandas, SQLAlchemy, alembic's schema check), and before its first run starts a stage imports TensorFlow and
builds its model, single-threaded Python too. The CLI starts a :class:`TrackingProcess` right after
:func:`imagegen.tracking.preflight_store`, so the two imports run side by side on two cores instead of one
after the other.

The stage's runs are then created, logged to and ended from the child, through a pipe, one request at a time:
each call returns once the store has done it, so a failing store surfaces at the call that met it (as the
one-line :class:`~imagegen.tracking.store.TrackingStoreError` it would be in-process), and a run's data is in
the store when the stage's process ends. The child ignores SIGINT (the stage, interrupted, still ends its runs
FAILED through it) and exits when its pipe closes, so it never outlives the stage, even one that is killed.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from imagegen.config import TrackingConfig
from imagegen.errors import ImagegenError
from imagegen.profiling import phase
from imagegen.tracking.store import TrackingStoreError

CLOSE_TIMEOUT_S = 30.0


class ProcessRun:
    """A run logged from a :class:`TrackingProcess`: the calls of :class:`imagegen.tracking.runs.Run`."""

    def __init__(self, process: TrackingProcess, run_id: str, tracking_uri: str) -> None:
        self._process = process
        self.run_id: str | None = run_id
        self.tracking_uri = tracking_uri

    def _log(self, method: str, *args: Any) -> None:
        with phase("mlflow", "tracking"):
            self._process.call("log", self.run_id, method, args)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._log("log_params", dict(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._log("log_metrics", {k: float(v) for k, v in metrics.items()}, step)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self._log("log_artifact", Path(path).resolve(), artifact_path)

    def log_image(self, image: np.ndarray, name: str) -> None:
        self._log("log_image", np.asarray(image), name)

    def log_dict(self, obj: Any, name: str) -> None:
        self._log("log_dict", obj, name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._log("set_tags", {k: str(v) for k, v in tags.items()})

    def end(self, status: str) -> None:
        """Terminate the run as ``status`` (FINISHED or FAILED)."""
        with phase("mlflow", "tracking"):
            self._process.call("end", self.run_id, status)


class TrackingProcess:
    """The child process holding this stage's MLflow client; a context manager that closes it."""

    def __init__(self, cfg: TrackingConfig, uri: str, *, verbose: bool = False) -> None:
        self.uri = uri
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-c", "from imagegen.tracking.process import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._send(("open", cfg, uri, verbose))  # the child starts importing mlflow at once

    def begin_run(self, run_name: str, **opened: Any) -> ProcessRun:
        """Create a run as :func:`imagegen.tracking.runs.begin_run` does, in the child."""
        return ProcessRun(self, self.call("begin", run_name, opened), self.uri)

    def call(self, op: str, *args: Any) -> Any:
        """Send one request and wait for its answer; the child's exception is raised here."""
        self._send((op, *args))
        status, value = self._receive()
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        """Let the child finish and exit (it has answered every request, so everything is stored)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            pickle.dump(("close",), proc.stdin)  # type: ignore[arg-type]
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]

    def __enter__(self) -> TrackingProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _send(self, request: tuple[Any, ...]) -> None:
        proc = self._alive()
        try:
            pickle.dump(request, proc.stdin)  # type: ignore[arg-type]
            proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, ValueError):
            raise self._died() from None

    def _receive(self) -> tuple[str, Any]:
        proc = self._alive()
        try:
            reply: tuple[str, Any] = pickle.load(proc.stdout)  # type: ignore[arg-type]
        except (EOFError, pickle.UnpicklingError, OSError):
            raise self._died() from None
        return reply

    def _alive(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise TrackingStoreError(f"MLflow store {self.uri}: its tracking process was already closed")
        return self._proc

    def _died(self) -> TrackingStoreError:
        proc = self._alive()
        try:
            code = proc.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # alive but deaf: nothing more can be logged through it
            proc.kill()
            code = proc.wait()
        self._proc = None
        return TrackingStoreError(
            f"MLflow store {self.uri}: the tracking process exited (code {code}); its error, if any, is above"
        )


def _portable(exc: Exception, uri: str) -> Exception:
    """``exc`` as the parent can unpickle it: imagegen's errors and Python's own as they are, a store's failure
    as its one line, anything else as a RuntimeError naming its type."""
    from imagegen.tracking.runs import is_store_failure, store_failure

    if is_store_failure(exc):
        return store_failure(uri, exc)
    if isinstance(exc, ImagegenError) or type(exc).__module__ == "builtins":
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:  # noqa: BLE001 - an exception whose arguments do not survive pickling
            pass
    return RuntimeError(f"{type(exc).__name__}: {exc}")


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The child's loop: open the store, then answer requests until ``close`` or the end of ``requests``."""
    from imagegen.quiet import configure
    from imagegen.tracking.runs import begin_run, open_store, store_errors

    op, cfg, uri, verbose = pickle.load(requests)
    assert op == "open"
    configure(verbose, lambda message: print(f"warning: {message}", file=sys.stderr), native_stderr=False)
    client: Any = None
    failure: Exception | None = None
    try:
        client, uri = open_store(cfg)
    except Exception as exc:  # noqa: BLE001 - reported at the first request, where the stage can raise it
        failure = _portable(exc, uri)
    runs: dict[str, Any] = {}
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:  # the stage's process has gone
            return
        op, *args = request
        if op == "close":
            return
        try:
            if failure is not None:
                raise failure
            if op == "begin":
                run_name, opened = args
                run = begin_run(client, uri, cfg, run_name, **opened)
                runs[run.run_id] = run
                reply: tuple[str, Any] = ("ok", run.run_id)
            elif op == "log":
                run_id, method, method_args = args
                getattr(runs[run_id], method)(*method_args)
                reply = ("ok", None)
            elif op == "end":
                run_id, status = args
                with store_errors(uri):
                    client.set_terminated(run_id, status=status)
                reply = ("ok", None)
            else:
                raise ValueError(f"tracking process: unknown request {op!r}")
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the stage, which raises it
            reply = ("error", _portable(exc, uri))
        pickle.dump(reply, replies)
        replies.flush()


def main() -> None:
    """The child's entry point: requests on stdin, replies on the original stdout; anything else
    printed goes to stderr."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        serve(sys.stdin.buffer, replies)
    finally:
        replies.close()
        sys.stdout.flush()
        sys.stderr.flush()
    # Every request was answered, so the store holds it all: skip the interpreter's teardown of mlflow and
    # SQLAlchemy (half a second that the stage, which waits for this process, would spend after its work).
    os._exit(0)
