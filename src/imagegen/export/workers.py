"""TFLite conversions in worker processes, so the variants of one SavedModel convert at the same time.

A conversion is single-threaded and mostly Python (the converter loads the SavedModel three times, runs the MLIR
passes, then walks the flatbuffer): about 4 s per variant for the unrolled 4-step diffusion sampler on a 2-core
Xeon, so the float32, float16 and int8 files of one export took 12 s one after another on one busy core. Threads
do not help (the converter holds the GIL); processes do.

A worker is a fresh ``python -m imagegen.export.workers`` process. The export starts its workers *before* it
writes the SavedModel, so their TensorFlow import (about 2 s each) runs beside the export's own tracing; each then
reads one job, a JSON line on its standard input (none: it exits), converts with
:func:`imagegen.export.tflite.write_tflite`, writes the file atomically and exits 0, or exits 2 with the
:class:`~imagegen.errors.ExportError`'s message as the last line of its standard error, which the export raises
again as its own. A worker reads the SavedModel on disk and nothing else, so the file it writes is the one the
exporting process would have written (the export stage's outputs stay byte-reproducible).

Worker output (TensorFlow's log lines) goes to a temporary file, read only when the worker failed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from imagegen.errors import ExportError
from imagegen.export.tflite import Conversion, write_tflite

MODULE = "imagegen.export.workers"


class _Worker:
    """One started worker process and the file its standard error goes to."""

    def __init__(self) -> None:
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by wait() or stop())
        self.process = subprocess.Popen(  # noqa: S603 (this interpreter, this module: no user input)
            [sys.executable, "-m", MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def send(self, job: dict[str, Any] | None) -> None:
        """Give the worker its job (None: no job, so it exits) and close its input."""
        assert self.process.stdin is not None
        try:
            if job is not None:
                self.process.stdin.write((json.dumps(job) + "\n").encode())
            self.process.stdin.close()
        except BrokenPipeError:  # it died while starting: wait() reports how
            pass

    def wait(self, conversion: Conversion) -> Path | ExportError:
        """The file the worker wrote, or an :class:`ExportError` saying how it failed."""
        code = self.process.wait()
        if code == 0 and conversion.dest.is_file():
            self.log.close()
            return conversion.dest
        self.log.seek(0)
        lines = [line.strip() for line in self.log.read().decode(errors="replace").splitlines() if line.strip()]
        self.log.close()
        if code == 2 and lines:
            return ExportError(lines[-1])
        why = lines[-1] if lines else "no message"
        ended = f"exit status {code}" if code >= 0 else f"signal {-code}"
        return ExportError(f"TFLite export ({conversion.label}): the conversion process ended with {ended}: {why}")

    def stop(self) -> None:
        """End the worker now (the export is failing) and forget its output."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        self.log.close()


class ConversionWorkers:
    """``count`` worker processes, started at once and used at most once each (see the module docstring).

    A context manager: on leaving, workers that got no job are told to exit and waited for; when the body raised,
    every worker still running is killed (a converting one's file is in the export's temporary folder, which goes
    with it)."""

    def __init__(self, count: int) -> None:
        self._idle = [_Worker() for _ in range(max(0, count))]
        self._busy: list[tuple[Conversion, _Worker]] = []

    def __enter__(self) -> ConversionWorkers:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:  # the export is failing: no worker's TensorFlow import is waited for
            self.stop()
            return
        for worker in self._idle:  # nothing for them to do: they exit once told so
            worker.send(None)
            worker.process.wait()
            worker.log.close()
        self.stop()

    def stop(self) -> None:
        """Kill every worker still running. The export calls it on a failure before its temporary folder goes,
        so no conversion still running writes into (and so re-creates) that folder."""
        for worker in [*self._idle, *(worker for _, worker in self._busy)]:
            worker.stop()
        self._idle, self._busy = [], []

    def submit(self, saved_model_dir: Path, conversion: Conversion) -> bool:
        """Hand ``conversion`` of ``saved_model_dir`` to a free worker; False when none is free or it needs a
        calibration generator (those run in the exporting process)."""
        if not self._idle or conversion.representative is not None:
            return False
        worker = self._idle.pop()
        worker.send(
            {
                "saved_model": str(Path(saved_model_dir).resolve()),
                "dest": str(Path(conversion.dest).resolve()),
                "variant": conversion.variant,
                "int8_kind": conversion.int8_kind,
            }
        )
        self._busy.append((conversion, worker))
        return True

    def results(self) -> list[tuple[Conversion, Path | ExportError]]:
        """Wait for every submitted conversion, in the order submitted."""
        done = [(conversion, worker.wait(conversion)) for conversion, worker in self._busy]
        self._busy = []
        return done


def main() -> int:
    """The worker: import TensorFlow, then convert the one job read from standard input (none: exit 0)."""
    from imagegen import startup

    startup.install()  # TensorFlow without the integrations it would import for nothing
    import tensorflow  # noqa: F401 (imported before the job arrives: this is what starting early buys)

    line = sys.stdin.readline()
    if not line.strip():
        return 0
    job = json.loads(line)
    try:
        write_tflite(Path(job["saved_model"]), Path(job["dest"]), job["variant"], int8_kind=job["int8_kind"])
    except ExportError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
