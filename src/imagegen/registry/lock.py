"""One promote at a time per registered model, across processes on this machine.

MLflow has no compare-and-set on aliases, so two promotes that interleave could leave a version that
is champion with a "refused" decision tag. An exclusive ``flock`` on a file named after the store
and the model serialises them: the second promote then sees the first one's champion. The lock file
lives in imagegen's cache folder (not beside the store, which may be a server or a read-only
folder). Promotes on *different* machines against one server are not serialised by this; the
decision is a function of the versions' tags, so two identical promotes still converge on the same
state."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

from imagegen.data.raw import cache_root
from imagegen.errors import ImagegenError


def lock_path(store_uri: str, name: str) -> Path:
    key = hashlib.sha256(f"{store_uri}|{name}".encode()).hexdigest()[:24]
    return cache_root() / "locks" / f"promote-{key}.lock"


@contextlib.contextmanager
def promote_lock(store_uri: str, name: str, timeout_s: float) -> Iterator[None]:
    """Hold the promote lock of ``name`` in ``store_uri``; a one-line error after ``timeout_s``."""
    path = lock_path(store_uri, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with path.open("a+") as fh:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ImagegenError(
                        f"{path}: another promote of {name!r} held this lock for more than "
                        f"{timeout_s:g} s (registry.lock_timeout_s); try again when it is done"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
