"""Quiet by default: the CLI hides TensorFlow/XLA/absl/CUDA start-up noise around the user's output.

TensorFlow's C++ logging (``Could not find cuda drivers``, ``failed call to cuInit``, ``Compiled cluster using
XLA!``, the oneDNN and CPU-feature notices) reads ``TF_CPP_MIN_LOG_LEVEL`` once, when TensorFlow is first
imported, so :func:`configure` must run before that: the CLI calls it first thing, and every stage imports
TensorFlow lazily. Python-side loggers (``tensorflow``, ``absl``, ``jax``) are raised to ERROR as well.

Some native lines ignore every such setting: absl's ``WARNING: All log messages before absl::InitializeLog()
is called are written to STDERR`` and what XLA logs through absl before it is initialised (``I0000 ...
device_compiler.h:196] Compiled cluster using XLA!``). For those, :func:`filter_native_stderr` puts a line
filter on file descriptor 2 that drops lines in the native log formats and passes everything else through.

``imagegen --verbose ...`` or ``IMAGEGEN_VERBOSE=1`` leaves all of it on. Variables the user set explicitly
(e.g. ``TF_CPP_MIN_LOG_LEVEL=0``) are never overridden.

Warnings of imagegen itself (the ``imagegen`` logger: a checkpoint fallback, a collapse warning) are always
printed, one ``warning: ...`` line each on stderr.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable

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
_NOISY_WARNING_MODULES = r"(tensorflow|keras|jax|absl|google\.protobuf|h5py)(\..*)?"
# Native log lines: absl/glog "I0000 00:00:1795454422.796501   10317 file.h:196] ...", TensorFlow's
# "2026-11-23 17:09:19.915700: I external/...", and absl's pre-initialisation notice.
NATIVE_NOISE = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\s:]+:\d+\] "
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|To enable the following instructions: .* in other operations, rebuild TensorFlow)"
)


def verbose_requested(flag: bool = False) -> bool:
    """True for ``--verbose`` or ``$IMAGEGEN_VERBOSE`` set to anything but empty/0/false/no."""
    env = os.environ.get(VERBOSE_ENV, "").strip().lower()
    return flag or env not in ("", "0", "false", "no", "off")


def configure(verbose: bool, emit: Callable[[str], None]) -> None:
    """Silence third-party start-up noise unless ``verbose``; route imagegen's own warnings to ``emit``."""
    if not verbose:
        for key, value in _QUIET_ENV.items():
            os.environ.setdefault(key, value)
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=_NOISY_WARNING_MODULES)
        filter_native_stderr()
        try:  # absl's Python logging, if installed (TensorFlow depends on it)
            from absl import logging as absl_logging

            absl_logging.set_verbosity(absl_logging.ERROR)
        except ImportError:  # pragma: no cover - absl comes with TensorFlow
            pass
    _route_imagegen_warnings(emit)


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
