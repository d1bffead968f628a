"""Do the exported artifacts draw what the Keras model draws, how fast, and how big are they?

Every artifact (the SavedModel and each TFLite file) runs once on ``export.parity_n`` fixed inputs: standard
normal noise from ``numpy.random.default_rng(seed)`` (``z`` and a family's declared extra inputs such as
per-pixel noise, or ``x_T`` for DDPM) and, for a conditional model, the labels ``arange(n) % num_classes``.
Its uint8 images are compared with the Keras model's images for the same inputs (:func:`keras_images`; DDPM:
``ddpm.generate(..., sampler="ddim", steps=ddpm_steps, eta=0, x_T=noise)``) by the largest absolute difference in
uint8 levels and the mean SSIM (:func:`imagegen.evaluation.metrics.image_similarity`).

Latency: that first call doubles as the warm-up; then ``export.latency_repeats`` calls on the same batch are
timed and the median divided by the batch size is reported in ms per image. TFLite inputs are resized to the
batch, tensors allocated, then invoked. Size: the file, or the SavedModel folder's total, in bytes.

:func:`check_parity` returns the two apart (:class:`Parity`): the ``report`` (sizes, errors, SSIM, verdicts, the
int8 choice), which the code, params and model determine and which goes into the DVC-tracked export folder as
``metrics.json``; and the ``timings`` (latencies), which differ from run to run and machine to machine and so
belong to untracked files and MLflow. Nothing in the report, the int8 choice included, depends on a timing.

Thresholds come from ``export.max_abs_error[name]`` and ``export.min_ssim[name]``; a name missing from a
mapping given in params falls back to the default of :class:`imagegen.config.ExportConfig` (so
``-S export.max_abs_error={int8: -1}`` tightens int8 only).

int8 candidates: when the export made several int8 kinds (``export.int8_quantization: fastest``), each is
checked as ``int8`` (same inputs, same thresholds) and the one :func:`imagegen.export.tflite.pick_int8` keeps (by
parity, never by latency) becomes the ``int8`` entry; ``metrics.json`` records the choice as
``"int8_quantization": {"kind", "why", "candidates": {kind: entry}}``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagegen.artifact import LoadedModel
from imagegen.config import ExportConfig
from imagegen.data.loader import to_uint8
from imagegen.evaluation.metrics import image_similarity
from imagegen.export.graph import OUTPUT, SIGNATURE, Serving
from imagegen.export.tflite import make_interpreter, pick_int8
from imagegen.sampler_settings import SamplerSettings
from imagegen.training.families import family_spec

Runner = Callable[[Mapping[str, np.ndarray]], np.ndarray]


def parity_inputs(serving: Serving, n: int, seed: int, num_classes: int) -> dict[str, np.ndarray]:
    """Fixed inputs for ``serving``: seeded float32 standard normal noise, labels cycling over the classes."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in serving.inputs:
        if spec.dtype == "int32":
            out[spec.name] = (np.arange(n) % num_classes).astype(np.int32)
        else:
            out[spec.name] = rng.standard_normal((n, *spec.shape)).astype(np.float32)
    return out


def keras_images(
    loaded: LoadedModel,
    inputs: Mapping[str, np.ndarray],
    *,
    ddpm_steps: int,
    clip_x0: bool = True,
    guidance_scale: float = 1.0,
) -> np.ndarray:
    """What the Keras model draws for ``inputs`` (uint8), the reference every artifact is compared with."""
    import keras

    family = loaded.family
    declared = family_spec(loaded.name)
    label = inputs.get("label")
    if declared.diffusion:  # x_T is image-shaped noise, or latent noise for a latent diffusion model
        from imagegen.export.graph import model_timesteps

        x_T = inputs["x_T"]
        grid = model_timesteps(loaded)
        settings = SamplerSettings(
            sampler="ddim", steps=ddpm_steps, eta=0.0, guidance_scale=guidance_scale, clip_x0=clip_x0,
            timesteps=grid or None,
        )  # fmt: skip
        # The rng is never drawn from: x_T is given and eta = 0.
        images = declared.generate(family, len(x_T), np.random.default_rng(0), labels=label, settings=settings, x_T=x_T)
        return to_uint8(images)
    net = family.networks[declared.sampling_networks[0]]
    z = inputs["z"]
    extras = [inputs[name] for name, _ in declared.extra_inputs(family.spec)] if declared.extra_inputs else []
    args = [z, *([label] if label is not None else []), *extras]
    out = net(args if len(args) > 1 else z, training=False)
    return to_uint8(np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float32))


# --------------------------------------------------------------------------------------------------
# Runners


def savedmodel_runner(path: Path) -> Runner:
    """Call the ``serving_default`` signature of the SavedModel at ``path``."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures[SIGNATURE]

    def run(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return fn(**{k: tf.constant(v) for k, v in inputs.items()})[OUTPUT].numpy()

    return run


def tflite_runner(path: Path, num_threads: int | None = None) -> Runner:
    """Run a TFLite model: inputs resized to the batch (tensors re-allocated when the shapes change), invoke."""
    interp = make_interpreter(Path(path), num_threads=num_threads)
    signature = interp.get_signature_runner(SIGNATURE)
    in_index = {name: d["index"] for name, d in signature.get_input_details().items()}
    out_index = signature.get_output_details()[OUTPUT]["index"]
    allocated: dict[str, tuple[int, ...]] = {}

    def run(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        shapes = {k: tuple(v.shape) for k, v in inputs.items()}
        if shapes != allocated:
            for name, shape in shapes.items():
                interp.resize_tensor_input(in_index[name], list(shape))
            interp.allocate_tensors()
            allocated.clear()
            allocated.update(shapes)
        for name, value in inputs.items():
            interp.set_tensor(in_index[name], np.ascontiguousarray(value))
        interp.invoke()
        return np.array(interp.get_tensor(out_index))

    return run


def runner_for(name: str, path: Path, num_threads: int | None = None) -> Runner:
    return savedmodel_runner(path) if name == "savedmodel" else tflite_runner(path, num_threads)


# --------------------------------------------------------------------------------------------------
# Measurements


def size_bytes(path: Path) -> int:
    """A file's size, or the total of the files under a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def limits(cfg: ExportConfig, name: str) -> tuple[float, float]:
    """(max abs error allowed, min SSIM required) for artifact ``name``, falling back to the defaults."""
    defaults = ExportConfig()
    max_err = cfg.max_abs_error.get(name, defaults.max_abs_error.get(name, float("inf")))
    min_ssim = cfg.min_ssim.get(name, defaults.min_ssim.get(name, float("-inf")))
    return float(max_err), float(min_ssim)


def latency_ms_per_image(run: Runner, inputs: Mapping[str, np.ndarray], repeats: int) -> float:
    """The median of ``repeats`` timed calls of ``run`` on ``inputs``, in ms per image (``run`` warmed up already)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(inputs)
        times.append(time.perf_counter() - start)
    batch = len(next(iter(inputs.values())))
    return 1000.0 * statistics.median(times) / batch


def check_artifact(
    name: str,
    path: Path,
    inputs: Mapping[str, np.ndarray],
    reference: np.ndarray,
    cfg: ExportConfig,
    num_threads: int | None = None,
) -> tuple[dict[str, Any], float]:
    """``(entry, latency)``: the artifact's entry of ``metrics.json`` (bytes, max_abs_error, ssim, passed), which
    only the artifact and the inputs determine, and its latency in ms per image, which is measured."""
    run = runner_for(name, path, num_threads)
    images = run(inputs)  # also the warm-up
    if images.shape != reference.shape or images.dtype != np.uint8:
        raise ValueError(f"{name}: artifact returned {images.dtype} {images.shape}, expected uint8 {reference.shape}")
    latency = latency_ms_per_image(run, inputs, cfg.latency_repeats)
    max_err = int(np.max(np.abs(images.astype(np.int16) - reference.astype(np.int16))))
    ssim = float(image_similarity(reference, images)["ssim"])
    max_allowed, min_ssim = limits(cfg, name)
    entry = {
        "bytes": size_bytes(path),
        "max_abs_error": max_err,
        "ssim": ssim,
        "passed": bool(max_err <= max_allowed and ssim >= min_ssim),
    }
    return entry, latency


@dataclass(frozen=True)
class Parity:
    """What :func:`check_parity` found, in two halves with the same nesting.

    ``report``, the content of ``metrics.json``, determined by the code, params and model::

        {"family", "ddpm_steps" (diffusion only),
         "artifacts": {name: {"bytes", "max_abs_error", "ssim", "passed"}},
         "int8_quantization" (int8 candidates given): {"kind", "why", "candidates": {kind: entry}}}

    ``timings``, measured on this machine (for an untracked file and MLflow, never a tracked output)::

        {"artifacts": {name: {"latency_ms_per_image"}},
         "int8_quantization" (int8 candidates given): {"candidates": {kind: {"latency_ms_per_image"}}}}

    ``timings["artifacts"]["int8"]`` is the kept kind's latency."""

    report: dict[str, Any]
    timings: dict[str, Any]


def check_parity(
    loaded: LoadedModel,
    serving: Serving,
    artifacts: Mapping[str, Path],
    cfg: ExportConfig,
    *,
    seed: int,
    clip_x0: bool = True,
    guidance_scale: float = 1.0,
    num_threads: int | None = None,
    int8_candidates: Mapping[str, Path] | None = None,
) -> Parity:
    """Check every artifact (``{name: path}``) and every int8 candidate (``{kind: path}``) against the Keras model
    and time it; keep the int8 kind :func:`~imagegen.export.tflite.pick_int8` picks by parity. See :class:`Parity`."""
    inputs = parity_inputs(serving, cfg.parity_n, seed, int(loaded.family.spec["num_classes"]))
    reference = keras_images(loaded, inputs, ddpm_steps=cfg.ddpm_steps, clip_x0=clip_x0, guidance_scale=guidance_scale)
    report: dict[str, Any] = {"family": loaded.name}
    if family_spec(loaded.name).diffusion:
        report["ddpm_steps"] = serving.meta["ddpm_steps"]
    checked = {
        name: check_artifact(name, path, inputs, reference, cfg, num_threads) for name, path in artifacts.items()
    }
    report["artifacts"] = {name: entry for name, (entry, _) in checked.items()}
    timings: dict[str, Any] = {"artifacts": {name: {"latency_ms_per_image": ms} for name, (_, ms) in checked.items()}}
    if int8_candidates:
        tried = {
            kind: check_artifact("int8", path, inputs, reference, cfg, num_threads)
            for kind, path in int8_candidates.items()
        }
        entries = {kind: entry for kind, (entry, _) in tried.items()}
        kind, why = pick_int8(entries)
        report["artifacts"]["int8"] = dict(entries[kind])
        report["int8_quantization"] = {"kind": kind, "why": why, "candidates": entries}
        timings["artifacts"]["int8"] = {"latency_ms_per_image": tried[kind][1]}
        timings["int8_quantization"] = {
            "candidates": {candidate: {"latency_ms_per_image": ms} for candidate, (_, ms) in tried.items()}
        }
    return Parity(report, timings)


def threshold_failures(report: Mapping[str, Any], cfg: ExportConfig) -> list[str]:
    """One line per artifact past a threshold, naming the measured value and the threshold."""
    lines = []
    for name, entry in report["artifacts"].items():
        max_allowed, min_ssim = limits(cfg, name)
        if not entry["max_abs_error"] <= max_allowed:
            lines.append(
                f"{name}: max abs error {entry['max_abs_error']} uint8 levels > threshold {max_allowed:g} "
                f"(export.max_abs_error.{name})"
            )
        if not entry["ssim"] >= min_ssim:
            lines.append(f"{name}: SSIM {entry['ssim']:.4f} < threshold {min_ssim:g} (export.min_ssim.{name})")
    return lines
