"""A DVC command's output as Prefect log lines, while it runs: what a person at a terminal would have seen.

Three kinds of output need different treatment:

* plain lines (DVC's ``Running stage ...``, the stage's own messages) are logged at INFO as they come;
* progress bars: the stages draw them with rich only on a terminal, so the stage processes get
  ``TTY_COMPATIBLE=1 TTY_INTERACTIVE=1`` (:func:`progress_env`) and redraw their bar in place with
  ``\\r``; each redraw is a *frame*, and one frame every ``progress_every_s`` is logged (``vae 120/1500
  loss=0.0412 2,310 img/s 0:05:31``), not ten a second;
* a Python traceback is logged at DEBUG: its last line (the exception) stays at INFO, and when the stage
  fails that line is the failure's cause, logged once at ERROR by the caller.

The stderr lines are kept (the last ones) so that a failure can be told in one line (:func:`failure_cause`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]")
BAR_GLYPHS = re.compile(r"[━╸╺╾╼]+")
SPACES = re.compile(r"\s{2,}")
STDERR_KEPT = 200
TRACEBACK_STARTS = (
    "Traceback (most recent call last)",
    "During handling of the above exception",
    "The above exception was the direct cause",
)
DVC_CMD_FAILED = re.compile(r"failed to reproduce '(?P<stage>[^']+)': failed to run: (?P<cmd>.*)$")


def progress_env(env: Mapping[str, str]) -> dict[str, str]:
    """Variables that make rich draw its progress bars into a pipe as on a terminal (frames ending in ``\\r``),
    wide enough for a bar's status fields; a terminal type only where none is usable."""
    extra = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": env.get("COLUMNS") or "160"}
    if env.get("TERM", "") in ("", "dumb", "unknown"):
        extra["TERM"] = "xterm"
    return extra


def clean(text: str) -> str:
    """A piece of terminal output as plain text: no escape sequences; a progress bar's glyphs dropped and its
    columns single-spaced; other lines keep their indentation."""
    text = ANSI.sub("", text).rstrip()
    if BAR_GLYPHS.search(text):
        return SPACES.sub(" ", BAR_GLYPHS.sub(" ", text)).strip()
    return text


def pieces(fd: int) -> Iterator[tuple[str, bool]]:
    """``(text, is_frame)`` for each piece a process writes to ``fd``: a piece ending in ``\\n`` is a line, one
    ending in a lone ``\\r`` is a frame (a terminal would overwrite it with the next piece)."""
    buf = b""
    while True:
        chunk = os.read(fd, 65536)
        if chunk:
            buf += chunk
        while True:
            cut = _next_end(buf, final=not chunk)
            if cut is None:
                break
            end, width, frame = cut
            yield buf[:end].decode("utf-8", "replace"), frame
            buf = buf[end + width :]
        if not chunk:
            if buf:
                yield buf.decode("utf-8", "replace"), False
            return


def _next_end(buf: bytes, final: bool) -> tuple[int, int, bool] | None:
    """Where the first piece of ``buf`` ends: (its length, the separator's width, whether it is a frame); None
    while a ``\\r`` at the very end may still be the first half of ``\\r\\n``."""
    n, r = buf.find(b"\n"), buf.find(b"\r")
    if n < 0 and r < 0:
        return None
    if r < 0 or (0 <= n < r):
        return n, 1, False
    if r + 1 == len(buf) and not final:
        return None
    if buf[r + 1 : r + 2] == b"\n":
        return r, 2, False
    return r, 1, True


class OutputLog:
    """Routes the pieces of one command's stdout and stderr (read by two threads) to ``logger``."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter[Any], progress_every_s: float) -> None:
        self.logger = logger
        self.progress_every_s = progress_every_s
        self.stderr: deque[str] = deque(maxlen=STDERR_KEPT)
        self.lines: deque[str] = deque(maxlen=STDERR_KEPT)
        self._lock = threading.Lock()
        self._last_frame: dict[str, float] = {}
        self._traceback: dict[str, str | None] = {}  # stream -> "plain" | "rich" while inside a traceback

    def piece(self, text: str, frame: bool, stream: str) -> None:
        """One piece of output of ``stream`` (``stdout`` or ``stderr``)."""
        line = clean(text)
        if not line.strip():
            return
        indented = line[:1].isspace()
        with self._lock:
            if frame:
                self._frame(line, stream)
                return
            self.lines.append(line)
            if stream == "stderr":
                self.stderr.append(line)
            self.logger.log(self._level(line, indented, stream), "%s", line)

    def _frame(self, line: str, stream: str) -> None:
        """A progress redraw: logged when ``progress_every_s`` have passed since the last one logged."""
        now = time.monotonic()
        last = self._last_frame.get(stream)
        if last is None or now - last >= self.progress_every_s:
            self._last_frame[stream] = now
            self.logger.info("%s", line)

    def _level(self, line: str, indented: bool, stream: str) -> int:
        """DEBUG inside a Python traceback (plain or rich-boxed), INFO for everything else; the exception line
        that ends a traceback is INFO."""
        inside = self._traceback.get(stream)
        if inside == "rich":
            if line.startswith("╰"):
                self._traceback[stream] = "plain"  # the exception line follows the box
            return logging.DEBUG
        if line.startswith(TRACEBACK_STARTS):
            self._traceback[stream] = "plain"
            return logging.DEBUG
        if line.startswith("╭") and "Traceback" in line:
            self._traceback[stream] = "rich"
            return logging.DEBUG
        if inside == "plain":
            if indented or line.startswith(("^", "~")):
                return logging.DEBUG
            self._traceback[stream] = None
        return logging.INFO


def failure_cause(stderr: Sequence[str], status: int) -> str:
    """The one line that says why a DVC command failed.

    When the stage's command failed, DVC's last line is ``ERROR: failed to reproduce '<stage>': failed to run:
    <cmd>, exited with N`` and the cause is the stage's own last stderr line before it (``error: ...`` from
    imagegen, or a traceback's exception line). Otherwise DVC itself failed and its last ``ERROR:`` line is the
    cause.
    """
    lines = [line.strip() for line in stderr if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("ERROR: ")]
    if not errors:
        return lines[-1] if lines else f"exited {status} without a message"
    last = errors[-1]
    found = DVC_CMD_FAILED.search(lines[last])
    if found is not None:
        own = [line for line in lines[:last] if not line.startswith(("WARNING: ", "ERROR: "))]
        if own:
            return f"{own[-1]} ({found['cmd']})"
    return lines[last].removeprefix("ERROR: ")
