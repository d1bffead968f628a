"""The serving signature every export shares: its name, its output and the description of one input.

Kept apart from :mod:`imagegen.export.graph` (which builds the graphs with Keras) so that TFLite conversion
(:mod:`imagegen.export.tflite`, and the conversion worker processes of :mod:`imagegen.export.workers`) reads a
SavedModel without importing Keras.
"""

from __future__ import annotations

from dataclasses import dataclass

SIGNATURE = "serving_default"
OUTPUT = "images"


@dataclass(frozen=True)
class InputSpec:
    """One named input of the serving signature; ``shape`` excludes the (dynamic) batch dimension."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy / TensorFlow dtype name: "float32" or "int32"
