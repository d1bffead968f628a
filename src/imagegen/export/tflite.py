"""SavedModel -> TFLite flatbuffers (float32, float16, dynamic-range int8), TFLite builtin ops only.

* ``float32``: plain conversion.
* ``float16``: ``optimizations=[DEFAULT]`` and ``target_spec.supported_types=[tf.float16]`` (weights stored
  as float16, dequantized at load on a CPU).
* ``int8``: ``optimizations=[DEFAULT]`` alone, i.e. dynamic-range quantization (int8 weights, float
  activations quantized on the fly by the kernels that support it); no representative dataset.

Every conversion asks for ``supported_ops=[TFLITE_BUILTINS]``: a graph needing a TensorFlow (Flex) kernel or a
custom op fails, and the :class:`~imagegen.errors.ExportError` raised names the op(s) as the converter spells
them (``tf.Erf``, ``tf.MatrixDeterminant``...). The converted model's op list is checked again through the
interpreter (:func:`check_builtin_ops`), so a Flex or custom op can never slip into a written file.

:func:`make_interpreter` prefers LiteRT (``ai_edge_litert.interpreter.Interpreter``) and falls back to
``tf.lite.Interpreter``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from imagegen.errors import ExportError
from imagegen.export.graph import SIGNATURE, require_tensorflow
from imagegen.fileio import write_bytes

VARIANTS = ("float32", "float16", "int8")

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


def make_interpreter(model: Path | bytes, num_threads: int | None = None) -> Any:
    """An interpreter for a ``.tflite`` path or flatbuffer bytes (tensors not allocated yet)."""
    cls = interpreter_class()
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


def convert(saved_model_dir: Path, variant: str) -> bytes:
    """Convert the ``serving_default`` signature of a SavedModel to a TFLite flatbuffer (builtin ops only)."""
    require_tensorflow()
    import tensorflow as tf

    if variant not in VARIANTS:
        raise ExportError(f"TFLite: unknown variant {variant!r}; expected one of {VARIANTS}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if variant in ("float16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        return bytes(converter.convert())
    except Exception as exc:  # tf.lite's ConverterError, or whatever the MLIR pipeline raised
        text = str(exc)
        ops = unsupported_ops_from_error(text, getattr(exc, "errors", ()))
        if ops:
            raise ExportError(
                f"TFLite export ({variant}) of {saved_model_dir}: op(s) with no TFLite builtin kernel: "
                f"{', '.join(ops)}; only builtin ops are allowed (no Flex/TF Select or custom ops), so "
                "the model must avoid them"
            ) from None
        raise ExportError(f"TFLite export ({variant}) of {saved_model_dir} failed: {_first_error_line(text)}") from exc


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


def check_builtin_ops(model: Path | bytes, what: str = "TFLite model") -> list[str]:
    """The sorted distinct op names of ``model``; :class:`ExportError` naming any Flex or custom op."""
    ops = sorted(set(model_ops(model)))
    bad = [op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "")]
    if bad:
        named = ", ".join(f"{op} (tf.{op[4:]})" if op.startswith("Flex") else op for op in bad)
        raise ExportError(f"{what}: op(s) that are not TFLite builtins: {named}; only builtin ops are allowed")
    return ops


def write_tflite(saved_model_dir: Path, dest: Path, variant: str) -> Path:
    """Convert, check the op list, and write ``dest`` atomically."""
    data = convert(saved_model_dir, variant)
    check_builtin_ops(data, f"TFLite export ({variant}) of {saved_model_dir}")
    return write_bytes(dest, data)
