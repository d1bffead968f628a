#!/usr/bin/env python3
"""imagegen-worker: ``prefect worker start ARGS``, stopped gracefully.

On SIGTERM or SIGINT (docker compose stop, down, a restart) the flow runs in progress get SIGTERM first, so Prefect
records each as Crashed and its deployment's concurrency slot is free at once; once they have ended, the worker
stops. (Stopping the worker first kills its runs outright: a killed run stays Running, and its slot holds the next
runs back until the slot's lease expires.) compose's stop_grace_period bounds the whole stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time


def others(skip: set[int]) -> list[int]:
    """The container's other live processes: the flow runs, their stages, anything started beside them."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            pids.append(int(name))
    return pids


def terminate(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def wait_gone(skip: set[int], timeout: float | None = None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while others(skip) and (deadline is None or time.monotonic() < deadline):
        time.sleep(0.5)


def main() -> int:
    worker = subprocess.Popen(["prefect", "worker", "start", *sys.argv[1:]])
    skip = {1, os.getpid(), worker.pid}
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        print("imagegen-worker: stopping the flow runs in progress, then the worker", file=sys.stderr, flush=True)
        terminate(others(skip))  # the flow runs (they report Crashed) and their stages
        wait_gone(skip, timeout=60)  # a shell left open with `docker exec` does not hold the stop back
        worker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = worker.wait()
    if not stopping:
        return code  # the worker ended by itself: its status
    terminate(others(skip))  # a run the worker started meanwhile
    wait_gone(skip)
    print("imagegen-worker: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
