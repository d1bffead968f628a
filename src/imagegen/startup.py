"""Start-up of an ``imagegen`` process: TensorFlow's CPU kernels, and no integrations that no stage uses.

**oneDNN on every x86 CPU** (:func:`set_tensorflow_defaults`). TensorFlow turns its oneDNN kernels on by
default on Linux only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (``DefaultOneDnnPolicy`` in
tensorflow/core/util/port.cc); elsewhere (many cloud CPUs without AVX-512) it runs its Eigen kernels, whose
convolution backward passes cost many times the forward on the default models' small shapes, so every train step
is slower (``bench/train_throughput.py`` compares; ``docs/benchmarks.md``). Every x86 machine then also runs the
same kernel library (oneDNN still picks code per instruction set, so results are close, not bit-identical).
``TF_ENABLE_ONEDNN_OPTS`` already set (``=0`` to compare) is left as it is.

**Cores used by independent branches, not by splitting small ops** (``TF_NUM_INTRAOP_THREADS``). The default
networks' ops are small (16-32 channels, 16x16): split over several threads an op gains little, the threads
mostly wait. Run instead as independent row shards of one batch (:mod:`imagegen.training.branches`) whose ops
TensorFlow's inter-op pool runs side by side, each on one thread, keep every core busy. So
:func:`tensorflow_defaults` gives each of up to :data:`MAX_BRANCHES` branches ``cores // branches`` intra-op
threads, and the train step and the samplers' predictor split their batches into ``cores // intra-op threads``
shards. A ``TF_NUM_INTRAOP_THREADS`` already set is kept (and with
it the number of shards that follows from it: set it to the core count to run unsplit).

**No integrations that no stage uses.**

``import keras`` on the TensorFlow backend also imports, because they happen to be installed, scikit-learn
(Keras' scikit-learn wrappers), pandas (Keras' DataFrame adapter), JAX (TFLite's JAX converter) and
``matplotlib.pyplot`` (Keras' image-gallery plots): a large share of the TensorFlow start-up of every stage
process, for code paths imagegen never takes (it feeds Keras numpy arrays, writes its grids with Pillow and
converts SavedModels to TFLite). :class:`HideFromBackend` answers those imports *made from inside* ``keras`` or
``tensorflow`` with ``ModuleNotFoundError``, which both libraries catch as "not installed". Everyone else still
imports them: imagegen's own code (scikit-learn's digits), MLflow (pandas).

Only the console script installs it (:func:`install`), and only when Keras runs on TensorFlow: on JAX, JAX is
the backend itself.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import json
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from types import FrameType
from typing import Any

OPTIONAL_INTEGRATIONS = frozenset({"sklearn", "pandas", "jax", "jaxlib", "matplotlib"})
"""Top-level packages hidden from the importers below."""
IMPORTERS = frozenset({"keras", "tensorflow"})
"""Top-level packages whose own imports of an optional integration are refused."""
_IMPORT_MACHINERY = ("importlib", "_frozen_importlib", __name__)


TENSORFLOW_DEFAULTS = {"TF_ENABLE_ONEDNN_OPTS": "1"}
"""Environment variables TensorFlow reads once, at import; set where the environment does not set them."""
INTRAOP_THREADS_ENV = "TF_NUM_INTRAOP_THREADS"
CPU_MATH_ENV = "TF_SET_ONEDNN_FPMATH_MODE"
"""TensorFlow's switch for oneDNN's float32 math mode (``BF16``: float32 convolutions computed in bfloat16).
oneDNN reads it once, when the process creates its first convolution; later changes do nothing."""
MAX_BRANCHES = 4
"""At most this many row shards per batch: beyond it shards get too small for the convolutions to pay."""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under ``taskset`` or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def tensorflow_defaults(cores: int | None = None) -> dict[str, str]:
    """:data:`TENSORFLOW_DEFAULTS` plus the intra-op threads per branch for ``cores`` (default: usable ones)."""
    cores = usable_cores() if cores is None else max(1, int(cores))
    branches = min(cores, MAX_BRANCHES)
    return {**TENSORFLOW_DEFAULTS, INTRAOP_THREADS_ENV: str(max(1, cores // branches))}


def set_tensorflow_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :func:`tensorflow_defaults` that ``environ`` (default ``os.environ``) lacks; the ones it set.

    Has an effect only before TensorFlow is imported: call it first thing in a process (the console script,
    the test suite, the benchmarks)."""
    env = os.environ if environ is None else environ
    added = {k: v for k, v in tensorflow_defaults().items() if k not in env}
    env.update(added)
    return added


@contextlib.contextmanager
def cpu_math_requested(mode: str, environ: MutableMapping[str, str] | None = None) -> Iterator[bool]:
    """Within the block, oneDNN is asked to compute float32 convolutions in bfloat16 (``mode == "bf16"``);
    yields whether this call asked.

    Like TF32 on a GPU, tensors stay float32 and only the products inside a convolution are rounded to bfloat16
    (8 bits of mantissa); on CPUs with AMX the convolutions then run on its tile units (a stack of 64-channel 3x3
    convolutions about twice as fast; whole train steps gain less, see ``FamilySpec.cpu_bf16_math``). oneDNN
    reads the switch once per process, at its first convolution, so the block must hold that convolution (the
    ``imagegen train`` and ``imagegen distill`` commands wrap their stage in it) and a later block changes
    nothing. On leaving, the switch is removed again: the processes the caller starts afterwards (``dvc repro``
    from a test, an export) compute in float32 as before. A ``TF_SET_ONEDNN_FPMATH_MODE`` the environment already
    sets is the user's choice and kept. ``float32`` asks nothing: it is oneDNN's default. CPUs without AMX ignore
    the request, AVX512_BF16 ones included (:func:`imagegen.training.precision.cpu_math_in_effect` tells).
    """
    env = os.environ if environ is None else environ
    asked = mode == "bf16" and CPU_MATH_ENV not in env
    if asked:
        env[CPU_MATH_ENV] = "BF16"
    try:
        yield asked
    finally:
        if asked:
            env.pop(CPU_MATH_ENV, None)


def keras_backend(environ: Mapping[str, str] | None = None) -> str:
    """The backend Keras will pick, found without importing it: ``$KERAS_BACKEND``, else ``backend`` of
    ``keras.json`` (``$KERAS_HOME`` or ``~/.keras``), else ``tensorflow``."""
    env = os.environ if environ is None else environ
    if env.get("KERAS_BACKEND"):
        return env["KERAS_BACKEND"]
    config = Path(env.get("KERAS_HOME") or Path.home() / ".keras") / "keras.json"
    try:
        return str(json.loads(config.read_text()).get("backend") or "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def _importer(frame: FrameType | None) -> str:
    """The module whose code runs the import: the first frame outside the import machinery."""
    while frame is not None:
        name = str(frame.f_globals.get("__name__", ""))
        if not name.startswith(_IMPORT_MACHINERY):
            return name
        frame = frame.f_back
    return ""


class HideFromBackend(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` finder refusing :data:`OPTIONAL_INTEGRATIONS` to code of :data:`IMPORTERS`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.partition(".")[0] not in OPTIONAL_INTEGRATIONS:
            return None
        importer = _importer(sys._getframe(1))
        if importer.partition(".")[0] in IMPORTERS:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden from {importer} by {__name__})")
        return None


def install() -> bool:
    """Put :class:`HideFromBackend` first on ``sys.meta_path`` when Keras will run on TensorFlow (once);
    whether it is installed."""
    if keras_backend() != "tensorflow":
        return False
    if not any(isinstance(f, HideFromBackend) for f in sys.meta_path):
        sys.meta_path.insert(0, HideFromBackend())
    return True
