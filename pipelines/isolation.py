"""Run a stage function in a fresh process.

TensorFlow holds GPU memory for the life of its process, so each training stage runs in its own
(spawned) process, like `dvc repro` runs each stage's CLI. The function is the same one the CLI calls;
only the process differs. Arguments and results must be picklable (params objects and paths are).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def call_in_fresh_process(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a spawned process; its exception (an ImagegenError too) is re-raised here."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()
