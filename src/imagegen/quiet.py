"""Quiet by default: the CLI hides TensorFlow/XLA/absl/CUDA start-up noise around the user's output.

TensorFlow's C++ logging (``Could not find cuda drivers``, ``failed call to cuInit``, ``Compiled cluster using
XLA!``, the oneDNN and CPU-feature notices) reads ``TF_CPP_MIN_LOG_LEVEL`` once, when TensorFlow is first
imported, so :func:`configure` must run before that: the CLI calls it first thing, and every stage imports
TensorFlow lazily. Python-side loggers (``tensorflow``, ``absl``, ``jax``) are raised to ERROR as well.

Some native lines ignore every such setting: absl's ``WARNING: All log messages before absl::InitializeLog()
is called are written to STDERR`` and what XLA logs through absl before it is initialised (``I0000 ...
device_compiler.h:196] Compiled cluster using XLA!``). For those, :func:`filter_native_stderr` puts a line
filter on file descriptor 2 that drops lines in the native log formats and passes everything else through.

The TFLite/LiteRT runtime's ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` is printed by its own
minimal logger (no environment variable reaches it) when an interpreter first allocates its tensors; it is a
:data:`NATIVE_NOISE` line too, and outside the CLI :func:`native_stderr_filtered` drops it around the call that
prints it (:func:`imagegen.export.tflite.make_interpreter`'s interpreters use it).

MLflow's notices on a new SQLite store (``Creating initial MLflow database tables...``, ``Updating database
tables``, alembic's migration lines) are held back too: their loggers are raised to WARNING unless the user set
``MLFLOW_LOGGING_LEVEL``.

``imagegen --verbose ...`` or ``IMAGEGEN_VERBOSE=1`` leaves all of it on. Variables the user set explicitly
(e.g. ``TF_CPP_MIN_LOG_LEVEL=0``) are never overridden.

Warnings of imagegen itself are always printed, one ``warning: ...`` line each on stderr: those of the
``imagegen`` logger (a checkpoint fallback, a collapse warning) and Python warnings raised from imagegen's own
code (an unknown word of a prompt), which would otherwise print as ``file:line: UserWarning: ...`` followed by
the source line.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

VERBOSE_ENV = "IMAGEGEN_VERBOSE"

# C++ logging of TensorFlow/XLA (3 = errors too; a failed cuInit on a CPU machine is logged as an error),
# gRPC and glog.
_QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TF_CPP_MAX_VLOG_LEVEL": "-1",
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "3",
    "ABSL_MIN_LOG_LEVEL": "3",
}
_NOISY_LOGGERS = ("tensorflow", "absl", "jax", "jax._src.xla_bridge", "h5py")
# Loggers whose INFO lines narrate what a user did not ask about (a new MLflow store's tables and migrations);
# children of loggers MLflow configures when imported, so a level set on them here survives that.
_CHATTY_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration", "alembic.runtime.plugins")
_MLFLOW_LEVEL_ENV = "MLFLOW_LOGGING_LEVEL"
_NOISY_WARNING_MODULES = r"(tensorflow|keras|jax|absl|google\.protobuf|h5py)(\..*)?"
# Native log lines: absl/glog "I0000 00:00:1795454422.796501   10317 file.h:196] ...", TensorFlow's
# "2026-11-23 17:09:19.915700: I external/...", and absl's pre-initialisation notice.
NATIVE_NOISE = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\s:]+:\d+\] "
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|To enable the following instructions: .* in other operations, rebuild TensorFlow"
    rb"|INFO: (?:Created TensorFlow Lite .*delegate for|Initialized TensorFlow Lite runtime|Replacing \d+ out of \d+ "
    rb"node\(s\) with delegate))"
)
_IMAGEGEN_DIR = Path(__file__).resolve().parent
_state: dict[str, bool] = {"verbose": False}


def verbose_requested(flag: bool = False) -> bool:
    """True for ``--verbose`` or ``$IMAGEGEN_VERBOSE`` set to anything but empty/0/false/no."""
    env = os.environ.get(VERBOSE_ENV, "").strip().lower()
    return flag or env not in ("", "0", "false", "no", "off")


def verbose_in_effect() -> bool:
    """Whether this process keeps third-party logs (``--verbose`` given to :func:`configure`, or the environment)."""
    return verbose_requested(_state["verbose"])


def configure(verbose: bool, emit: Callable[[str], None], *, native_stderr: bool = True) -> None:
    """Silence third-party start-up noise unless ``verbose``; route imagegen's own warnings to ``emit``.
    ``native_stderr=False`` leaves file descriptor 2 unfiltered, for a process that loads no native library that
    writes there (the tracking process) and so need not pass its lines through a thread."""
    _state["verbose"] = verbose
    if not verbose:
        for key, value in _QUIET_ENV.items():
            os.environ.setdefault(key, value)
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        if not os.environ.get(_MLFLOW_LEVEL_ENV):
            for name in _CHATTY_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", module=_NOISY_WARNING_MODULES)
        if native_stderr:
            filter_native_stderr()
        try:  # absl's Python logging, if installed (TensorFlow depends on it)
            from absl import logging as absl_logging

            absl_logging.set_verbosity(absl_logging.ERROR)
        except ImportError:  # pragma: no cover - absl comes with TensorFlow
            pass
    _route_imagegen_warnings(emit)
    _route_imagegen_python_warnings(emit)


def filter_native_stderr() -> bool:
    """Route file descriptor 2 through a thread that drops :data:`NATIVE_NOISE` lines; True if installed.

    Installed once per process, and only when ``sys.stderr`` is the real descriptor 2 (not under a test
    runner that captured it). The filter is removed at exit after the last line is passed on.
    """
    try:
        if sys.stderr is None or sys.stderr.fileno() != 2 or getattr(filter_native_stderr, "installed", False):
            return False
    except (AttributeError, OSError, ValueError):  # a captured stream has no usable descriptor
        return False
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as source, os.fdopen(original, "wb", buffering=0, closefd=False) as sink:
            for line in source:
                if not NATIVE_NOISE.match(line):
                    sink.write(line)

    thread = threading.Thread(target=pump, name="imagegen-stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the pump sees EOF and drains
        thread.join(timeout=5)

    atexit.register(restore)
    filter_native_stderr.installed = True  # type: ignore[attr-defined]
    return True


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Drop the :data:`NATIVE_NOISE` lines native code writes to file descriptor 2 inside the block; every other
    byte written there is passed on, in order, when the block ends.

    For a call whose native log line no setting reaches (a TFLite interpreter's first tensor allocation). Does
    nothing when verbose, or where :func:`filter_native_stderr` already filters the whole process."""
    if verbose_requested(_state["verbose"]) or getattr(filter_native_stderr, "installed", False):
        yield
        return
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = b"".join(line for line in caught if not NATIVE_NOISE.match(line))
            if kept:
                os.write(2, kept)


class _EmitHandler(logging.Handler):
    def __init__(self, emit: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self.emit_line = emit

    def emit(self, record: logging.LogRecord) -> None:
        self.emit_line(record.getMessage())


def _route_imagegen_warnings(emit: Callable[[str], None]) -> None:
    logger = logging.getLogger("imagegen")
    for handler in list(logger.handlers):
        if isinstance(handler, _EmitHandler):
            logger.removeHandler(handler)
    logger.addHandler(_EmitHandler(emit))
    logger.setLevel(logging.WARNING)


def _from_imagegen(filename: str) -> bool:
    """True for a source file of the imagegen package (where a warning was attributed)."""
    try:
        return Path(filename).resolve().is_relative_to(_IMAGEGEN_DIR)
    except (OSError, ValueError):
        return False


def _route_imagegen_python_warnings(emit: Callable[[str], None]) -> None:
    """Show Python warnings raised from imagegen's code as one ``emit`` line (the message alone: no
    ``file:line: UserWarning:`` prefix, no source line); warnings of other code are shown as before."""
    shown = warnings.showwarning
    previous = getattr(shown, "passes_on_to", shown)

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if _from_imagegen(filename):
            emit(str(message))
        else:
            previous(message, category, filename, lineno, file, line)

    show.passes_on_to = previous  # type: ignore[attr-defined]
    warnings.showwarning = show
