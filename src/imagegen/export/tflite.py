"""SavedModel -> TFLite flatbuffers (float32, float16, int8), TFLite builtin ops only.

* ``float32``: plain conversion.
* ``float16``: ``optimizations=[DEFAULT]`` and ``target_spec.supported_types=[tf.float16]`` (weights stored
  as float16, dequantized at load on a CPU).
* ``int8``, of one of two kinds (:data:`INT8_KINDS`):

  - ``dynamic_range``: ``optimizations=[DEFAULT]`` alone: int8 weights, float activations quantized on the fly
    by the kernels that support it ("hybrid" kernels); no representative dataset. XNNPACK has no hybrid
    kernels, so on a CPU these run TFLite's reference-speed paths, far slower than float32 for the
    DCGAN/VAE generators (TRANSPOSE_CONV).
  - ``full_integer``: ``optimizations=[DEFAULT]``, a representative dataset (:func:`representative_dataset`,
    the generator's own inputs: N(0, 1) noise and cycling labels) to calibrate every activation's range, and
    ``supported_ops=[TFLITE_BUILTINS_INT8]``: int8 weights *and* activations, run by XNNPACK's int8 kernels.
    The signature keeps float32 noise in (callers feed every variant the same noise; the QUANTIZE of the
    input is one cheap op) and uint8 images out (the graph's output is already integer).

  The export stage (``export.int8_quantization``: ``fastest``) converts both, checks both against Keras and
  keeps full integer when it passes parity, else dynamic range (:func:`pick_int8`): a fixed rule, not a race,
  so the file kept depends on the model alone and never on a timing; a diffusion graph gets dynamic range
  alone (:func:`int8_kinds`: full integer has never passed parity through the unrolled sampler).

Every conversion asks for builtin ops only: a graph needing a TensorFlow (Flex) kernel or a
custom op fails, and the :class:`~imagegen.errors.ExportError` raised names the op(s) as the converter spells
them (``tf.Erf``, ``tf.MatrixDeterminant``...). The converted model's op list is checked again through the
interpreter (:func:`check_builtin_ops`), so a Flex or custom op can never slip into a written file.

:func:`make_interpreter` prefers LiteRT (``ai_edge_litert.interpreter.Interpreter``) and falls back to
``tf.lite.Interpreter``. Its interpreters allocate tensors without the runtime's
``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` on stderr (:func:`imagegen.quiet.native_stderr_filtered`).
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imagegen.errors import ExportError
from imagegen.export.signature import SIGNATURE, InputSpec
from imagegen.fileio import write_bytes
from imagegen.profiling import phase
from imagegen.quiet import native_stderr_filtered

VARIANTS = ("float32", "float16", "int8")
INT8_KINDS = ("dynamic_range", "full_integer")

Representative = Callable[[], Iterator[dict[str, np.ndarray]]]

# Why ``fastest`` does not try full_integer on a diffusion graph (the report carries it under ``not_tried``).
DIFFUSION_FULL_INTEGER = (
    "not tried for a diffusion graph: int8 activations through the unrolled DDIM steps compound the rounding "
    "(the default 4-step student: max |error| 204 uint8 levels against the threshold 48 in every export measured), "
    "so it never passed parity; set export.int8_quantization=full_integer to convert it anyway"
)


def int8_kinds(setting: str, diffusion: bool) -> tuple[dict[str, str], tuple[str, ...]]:
    """The int8 kinds ``export.int8_quantization`` converts, and those it leaves out with the reason: one named
    kind; for ``fastest`` both, but dynamic range alone for a diffusion graph (see ``DIFFUSION_FULL_INTEGER``),
    which saves a calibrated conversion and a parity run that cannot pass."""
    if setting != "fastest":
        return {}, (setting,)
    if diffusion:
        return {"full_integer": DIFFUSION_FULL_INTEGER}, ("dynamic_range",)
    return {}, INT8_KINDS


_OP_PATTERNS = (
    re.compile(r"'(tf\.[A-Za-z0-9_]+)' op is neither a custom op nor a flex op"),
    re.compile(r"^\s*(tf\.[A-Za-z0-9_]+)\(", re.MULTILINE),  # the "Details:" lines
)
_OP_LIST_PATTERN = re.compile(r"(?:TF Select ops|Custom ops|Flex ops): *([A-Za-z0-9_, ]+)")
_UNRESOLVED_PATTERN = re.compile(r"unresolved custom op: *([A-Za-z0-9_]+)", re.IGNORECASE)


def interpreter_class() -> Any:
    """LiteRT's ``Interpreter`` when ``ai-edge-litert`` is installed, else ``tf.lite.Interpreter``."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter
    return Interpreter


@functools.cache
def quiet_interpreter_class(cls: type) -> type:
    """``cls`` whose ``allocate_tensors`` drops the runtime's native INFO lines: the first allocation in a process
    creates the XNNPACK delegate, and TFLite's own logger announces that on stderr whatever ``TF_CPP_MIN_LOG_LEVEL``
    says. Other output written meanwhile (an allocation error) still reaches stderr."""

    class QuietInterpreter(cls):  # type: ignore[misc,valid-type]
        def allocate_tensors(self, *args: Any, **kwargs: Any) -> Any:
            with native_stderr_filtered():
                return super().allocate_tensors(*args, **kwargs)

    QuietInterpreter.__qualname__ = QuietInterpreter.__name__ = f"Quiet{cls.__name__}"
    return QuietInterpreter


def make_interpreter(model: Path | bytes, num_threads: int | None = None) -> Any:
    """An interpreter for a ``.tflite`` path or flatbuffer bytes (tensors not allocated yet), whose
    ``allocate_tensors`` prints no runtime INFO line (:func:`quiet_interpreter_class`)."""
    cls = quiet_interpreter_class(interpreter_class())
    if isinstance(model, bytes | bytearray):
        return cls(model_content=bytes(model), num_threads=num_threads)
    return cls(model_path=str(model), num_threads=num_threads)


def unsupported_ops_from_error(text: str, errors: Any = ()) -> list[str]:
    """The TensorFlow ops a converter error reports as having no builtin kernel, e.g. ``["tf.Erf"]``."""
    names: set[str] = set()
    for pattern in _OP_PATTERNS:
        names.update(pattern.findall(text))
    for listed in _OP_LIST_PATTERN.findall(text):
        names.update(f"tf.{n.strip()}" for n in listed.split(",") if n.strip())
    for err in errors or ():
        name = getattr(getattr(err, "operator", None), "name", "")
        if name.startswith("tf."):
            names.add(name)
    return sorted(names)


def _first_error_line(text: str) -> str:
    for line in text.splitlines():
        if "error:" in line:
            return line.split("error:", 1)[1].strip()[:500]
    return text.strip().splitlines()[0][:500] if text.strip() else "(no message)"


def representative_dataset(samples: Mapping[str, np.ndarray], inputs: Sequence[InputSpec]) -> Representative:
    """The converter's calibration data: ``samples`` (one array per signature input, samples along axis 0) checked
    against ``inputs`` and fed one sample at a time (batch 1) as ``{input name: array}``.

    A missing, extra or misshapen input, a wrong dtype, no samples or a non-finite value is an
    :class:`ExportError` naming the input and what was expected."""
    expected = {spec.name: spec for spec in inputs}
    if set(samples) != set(expected):
        raise ExportError(
            f"TFLite int8 representative dataset: inputs {sorted(samples)}, expected the signature's {sorted(expected)}"
        )
    counts = set()
    arrays: dict[str, np.ndarray] = {}
    for name, spec in expected.items():
        array = np.asarray(samples[name])
        if array.ndim != 1 + len(spec.shape) or tuple(array.shape[1:]) != spec.shape or len(array) == 0:
            raise ExportError(
                f"TFLite int8 representative dataset: input {name!r} has shape {array.shape}, expected "
                f"(N >= 1, {', '.join(map(str, spec.shape))})".replace(", )", ")")
            )
        if array.dtype != np.dtype(spec.dtype):
            raise ExportError(
                f"TFLite int8 representative dataset: input {name!r} is {array.dtype}, expected {spec.dtype}"
            )
        if not np.all(np.isfinite(array)):
            raise ExportError(f"TFLite int8 representative dataset: input {name!r} holds NaN or infinite values")
        counts.add(len(array))
        arrays[name] = array
    if len(counts) != 1:
        raise ExportError(f"TFLite int8 representative dataset: inputs hold different sample counts {sorted(counts)}")
    n = counts.pop()

    def generate() -> Iterator[dict[str, np.ndarray]]:
        for i in range(n):
            yield {name: array[i : i + 1] for name, array in arrays.items()}

    return generate


def convert(
    saved_model_dir: Path,
    variant: str,
    *,
    int8_kind: str = "dynamic_range",
    representative: Representative | None = None,
) -> bytes:
    """Convert the ``serving_default`` signature of a SavedModel to a TFLite flatbuffer (builtin ops only).

    ``int8_kind`` (``int8`` only): ``dynamic_range`` or ``full_integer``; the latter needs ``representative``.
    Reads the SavedModel on disk only (no Keras), so any process with TensorFlow converts it to the same bytes.
    The converter's conversion metadata (TensorFlow version, options, a model hash) is left out: the export's
    ``metrics.json`` records what the file is, and writing the metadata costs a Python round trip through the
    whole flatbuffer on every conversion."""
    import tensorflow as tf

    if variant not in VARIANTS:
        raise ExportError(f"TFLite: unknown variant {variant!r}; expected one of {VARIANTS}")
    if variant == "int8" and int8_kind not in INT8_KINDS:
        raise ExportError(f"TFLite: unknown int8 kind {int8_kind!r}; expected one of {INT8_KINDS}")
    full_integer = variant == "int8" and int8_kind == "full_integer"
    if full_integer and representative is None:
        raise ExportError("TFLite int8 full_integer export needs a representative dataset (none was given)")
    label = f"{variant} {int8_kind}" if variant == "int8" else variant
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[SIGNATURE])
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if full_integer else tf.lite.OpsSet.TFLITE_BUILTINS
    ]
    converter.allow_custom_ops = False
    converter.exclude_conversion_metadata = True
    if variant in ("float16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if full_integer:
        converter.representative_dataset = representative
    try:
        return bytes(converter.convert())
    except ExportError:
        raise
    except Exception as exc:  # tf.lite's ConverterError, or whatever the MLIR pipeline / calibrator raised
        text = str(exc)
        ops = unsupported_ops_from_error(text, getattr(exc, "errors", ()))
        if ops:
            raise ExportError(
                f"TFLite export ({label}) of {saved_model_dir}: op(s) with no TFLite builtin kernel: "
                f"{', '.join(ops)}; only builtin ops are allowed (no Flex/TF Select or custom ops), so "
                "the model must avoid them"
            ) from None
        raise ExportError(f"TFLite export ({label}) of {saved_model_dir} failed: {_first_error_line(text)}") from exc


def pick_int8(entries: Mapping[str, Mapping[str, Any]]) -> tuple[str, str]:
    """The int8 kind to keep among candidates checked for parity ``{kind: parity entry}``, and why, in words.

    A fixed rule on parity alone, so the kept ``model_int8.tflite`` and the report depend on the model, never
    on a timing: ``full_integer`` when it passes (XNNPACK runs its int8 kernels, whereas it has no hybrid kernels
    for dynamic range, which then runs TFLite's reference-speed paths), else ``dynamic_range`` when it passes;
    when none passes, ``dynamic_range`` (the one whose failure the export then reports). A latency in an entry
    is ignored: it is reported, it does not decide."""
    passing = [kind for kind in INT8_KINDS if kind in entries and entries[kind]["passed"]]
    if not passing:
        kind = "dynamic_range" if "dynamic_range" in entries else next(iter(entries))
        return kind, "no kind passes parity"
    kind = "full_integer" if "full_integer" in passing else passing[0]
    others = [k for k in entries if k != kind]
    if not others:
        return kind, "the only kind tried"
    if len(passing) == 1:
        return kind, f"the only kind that passes parity ({', '.join(others)} failed)"
    return kind, "both pass parity; full_integer computes in int8 throughout, on XNNPACK's int8 kernels"


def model_ops(model: Path | bytes) -> list[str]:
    """Names of the ops in a TFLite model (``CONV_2D``, ``FlexErf``...), read through the interpreter."""
    try:
        interp = make_interpreter(model)
    except (RuntimeError, ValueError) as exc:
        unresolved = _UNRESOLVED_PATTERN.findall(str(exc))
        if unresolved:
            raise ExportError(
                f"TFLite model uses op(s) with no builtin kernel: {', '.join(sorted(set(unresolved)))}"
            ) from None
        raise ExportError(f"TFLite model cannot be loaded: {exc}") from None
    details = getattr(interp, "_get_ops_details", None)
    if details is None:  # an interpreter without the (private) op listing: nothing more to check
        return []
    return [str(d["op_name"]) for d in details()]


@dataclass(frozen=True)
class Conversion:
    """One TFLite file to convert from the SavedModel: its destination, variant and int8 kind; ``representative``
    (full integer int8 only) calibrates it, and keeps it in the exporting process (a generator does not travel to
    a worker process)."""

    dest: Path
    variant: str
    int8_kind: str = "dynamic_range"
    representative: Representative | None = None

    @property
    def label(self) -> str:
        return f"{self.variant} {self.int8_kind}" if self.variant == "int8" else self.variant


class Workers(Protocol):
    """What :func:`convert_all` hands conversions to (:class:`imagegen.export.workers.ConversionWorkers`)."""

    def submit(self, saved_model_dir: Path, conversion: Conversion) -> bool:
        """Start ``conversion`` in a free worker; False when none is free (the caller converts it itself)."""
        ...

    def results(self) -> list[tuple[Conversion, Path | ExportError]]:
        """Wait for every submitted conversion: its written file, or the error it failed with."""
        ...


def convert_all(
    saved_model_dir: Path, conversions: Sequence[Conversion], workers: Workers | None = None
) -> list[Path | ExportError]:
    """Convert and write every one of ``conversions`` (:func:`write_tflite`): per conversion, in order, its file
    or the :class:`ExportError` it failed with (the caller decides which failures are fatal).

    With ``workers``, every conversion a free worker takes runs in that process while this one converts the
    rest: a conversion is single-threaded, so on several cores the variants of one SavedModel convert at once."""
    remote = [
        i
        for i, c in enumerate(conversions)
        if c.representative is None and workers is not None and workers.submit(Path(saved_model_dir), c)
    ]
    out: list[Path | ExportError | None] = [None] * len(conversions)
    for i, c in enumerate(conversions):
        if i in remote:
            continue
        with phase(f"export.tflite_{c.variant}", "compile"):
            try:
                out[i] = write_tflite(
                    saved_model_dir, c.dest, c.variant, int8_kind=c.int8_kind, representative=c.representative
                )
            except ExportError as exc:
                out[i] = exc
    if remote and workers is not None:
        with phase("export.tflite_workers", "compile"):  # what is left of the workers' conversions
            done = workers.results()  # in the order submitted: that of ``remote``
        for i, (_, result) in zip(remote, done, strict=True):
            out[i] = result
    assert all(result is not None for result in out)
    return out  # type: ignore[return-value]


def int8_candidates(conversions: Sequence[Conversion], results: Sequence[Path | ExportError]) -> dict[str, Path]:
    """``{kind: file}`` of the int8 conversions among ``conversions`` that succeeded.

    With several kinds, one whose conversion failed (a graph op with no int8 kernel) is left out with a warning
    naming the error, so ``fastest`` never fails where ``dynamic_range`` alone would succeed; a single kind's
    failure is raised."""
    tried = [(c, r) for c, r in zip(conversions, results, strict=True) if c.variant == "int8"]
    out: dict[str, Path] = {}
    for c, result in tried:
        if isinstance(result, ExportError):
            if len(tried) == 1:
                raise result
            warnings.warn(f"int8 {c.int8_kind} left out: {result}", stacklevel=2)
        else:
            out[c.int8_kind] = result
    if tried and not out:
        raise ExportError(f"TFLite int8: no kind of {[c.int8_kind for c, _ in tried]} could be converted")
    return out


def keep_int8(candidates: Mapping[str, Path], kind: str, dest: Path) -> Path:
    """Rename the kept candidate to ``dest`` and delete the others."""
    for other, path in candidates.items():
        if other != kind:
            Path(path).unlink()
    return Path(candidates[kind]).replace(dest)


def check_builtin_ops(model: Path | bytes, what: str = "TFLite model") -> list[str]:
    """The sorted distinct op names of ``model``; :class:`ExportError` naming any Flex or custom op."""
    ops = sorted(set(model_ops(model)))
    bad = [op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "")]
    if bad:
        named = ", ".join(f"{op} (tf.{op[4:]})" if op.startswith("Flex") else op for op in bad)
        raise ExportError(f"{what}: op(s) that are not TFLite builtins: {named}; only builtin ops are allowed")
    return ops


def write_tflite(
    saved_model_dir: Path,
    dest: Path,
    variant: str,
    *,
    int8_kind: str = "dynamic_range",
    representative: Representative | None = None,
) -> Path:
    """Convert, check the op list, and write ``dest`` atomically."""
    data = convert(saved_model_dir, variant, int8_kind=int8_kind, representative=representative)
    check_builtin_ops(data, f"TFLite export ({variant}) of {saved_model_dir}")
    return write_bytes(dest, data)
