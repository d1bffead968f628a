"""Stage ``export``: a trained model folder -> SavedModel + TFLite files, checked against the Keras model.

Output folder (default ``export.export_dir / <family>``)::

    savedmodel/              serving_default: noise (+ label) -> uint8 images, dynamic batch
    model_float32.tflite     one per entry of export.tflite_variants
    model_float16.tflite
    model_int8.tflite        the int8 kind export.int8_quantization kept (fastest: full_integer when it passes parity)
    metrics.json             {"family", "weights_digest" (of the model exported), "ddpm_steps" (ddpm),
                              "artifacts": {name: {"bytes", "max_abs_error", "ssim", "passed"}},
                              "int8_quantization" (int8): {"kind", "why", "candidates": {kind: entry}}}

A copy of ``metrics.json`` and a markdown table (``report.md``) also go to ``report_dir`` (default
``<train.reports_dir>/export_<folder name>``), outside the DVC-tracked export folder, for ``dvc metrics``; the
figures are logged to an MLflow run of the ``export`` stage. Latencies (``latency_ms_per_image`` per artifact)
are measured, not determined: they go to ``run.json`` in ``report_dir`` (not tracked) and to MLflow, so the
tracked files are the same bytes on every re-run of the same model.

The folder is built in a temporary sibling (:func:`imagegen.fileio.atomic_dir`) and swapped in only when every
artifact was written and passed its thresholds, so a failed export leaves the previous output (or nothing)
in place, never a half-written folder. When an artifact misses a threshold, the report that failed is kept
readable beside the output as ``<out_dir>.failed-metrics.json`` (same content as ``metrics.json``) and the
:class:`~imagegen.errors.ExportError` names its path; that file is removed by the next run of the stage.

Needs the TensorFlow backend of Keras (see :mod:`imagegen.export`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagegen.artifact import load_model, read_model_meta
from imagegen.config import ExportConfig, Params
from imagegen.errors import ExportError
from imagegen.fileio import atomic_dir, write_json, write_text
from imagegen.outputs import MARKER, check_output, marker_text
from imagegen.profiling import phase
from imagegen.provenance import DIGEST_KEY
from imagegen.startup import usable_cores
from imagegen.timings import RUN_FILE
from imagegen.tracking import TrackingProcess, finite_metrics, start_run

if TYPE_CHECKING:
    from imagegen.export.graph import Serving
    from imagegen.export.tflite import Conversion


def failed_report_path(out_dir: Path) -> Path:
    """Where a failing export's metrics are kept: ``<out_dir>.failed-metrics.json``, beside the output folder."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}.failed-metrics.json")


def report_dir_for(params: Params, out_dir: Path, report_dir: Path | None) -> Path:
    """Where the report copy goes: ``report_dir``, else ``<train.reports_dir>/export_<out_dir name>``."""
    return Path(report_dir) if report_dir is not None else params.train.reports_dir / f"export_{Path(out_dir).name}"


def report_table(report: dict[str, Any], timing: dict[str, Any] | None = None) -> str:
    """The variants as a markdown table: size, max abs error, SSIM vs Keras, parity; with ``timing`` (the
    measured half of the report, :mod:`imagegen.timings`) also the latency per image on this machine."""
    steps = f", {report['ddpm_steps']} DDIM steps in the graph" if "ddpm_steps" in report else ""
    timed = (timing or {}).get("artifacts", {})
    latency_head = " latency (ms/image) |" if timed else ""
    lines = [
        f"# Export of {report['family']}{steps}",
        "",
        f"| artifact | size (KiB) |{latency_head} max abs error (uint8) | SSIM vs Keras | parity |",
        "| --- | ---: |" + (" ---: |" if timed else "") + " ---: | ---: | --- |",
    ]
    order = {name: i for i, name in enumerate(("savedmodel", "float32", "float16", "int8"))}
    for name, a in sorted(report["artifacts"].items(), key=lambda kv: order.get(kv[0], len(order))):
        ms = timed.get(name, {}).get("latency_ms_per_image")
        latency = (f" {ms:.3f} |" if ms is not None else " |") if timed else ""
        lines.append(
            f"| {name} | {a['bytes'] / 1024:.1f} |{latency} {a['max_abs_error']} | "
            f"{a['ssim']:.4f} | {'passed' if a['passed'] else 'FAILED'} |"
        )
    if "int8_quantization" in report:
        lines += ["", f"int8 kept: {report['int8_quantization']['kind']} ({report['int8_quantization']['why']})"]
        for kind, why in report["int8_quantization"].get("not_tried", {}).items():
            lines.append(f"int8 {kind} {why}")
    return "\n".join(lines) + "\n"


def planned_files(cfg: ExportConfig, diffusion: bool) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """``(variant, int8 kind)`` of every TFLite file the export converts (``export.tflite_variants``; int8: one
    file per kind tried, the kept one renamed later; a float variant's kind is ``""``), and the int8 kinds not
    tried, with why. Known before any model is loaded, so the workers can be started first."""
    from imagegen.export.tflite import int8_kinds

    files: list[tuple[str, str]] = []
    not_tried: dict[str, str] = {}
    for variant in dict.fromkeys(cfg.tflite_variants):
        if variant != "int8":
            files.append((variant, ""))
            continue
        not_tried, kinds = int8_kinds(cfg.int8_quantization, diffusion)
        files += [("int8", kind) for kind in kinds]
    return files, not_tried


def conversion_workers(cfg: ExportConfig, diffusion: bool) -> int:
    """Worker processes for the TFLite conversions (``export.conversion_workers``): ``auto`` gives a diffusion
    sampler (whose unrolled graph takes seconds per conversion) one per file the exporting process would
    otherwise convert beside another one, when more than one core is usable: every file but one, or every file
    but the calibrated full-integer int8 (which stays in-process). A decoder's conversions take a fraction of a
    second, less than a worker's start."""
    if cfg.conversion_workers != "auto":
        return int(cfg.conversion_workers)
    if not diffusion or usable_cores() < 2:
        return 0
    files, _ = planned_files(cfg, diffusion)
    in_process = files.count(("int8", "full_integer"))
    return max(0, len(files) - in_process - (0 if in_process else 1))


def tflite_conversions(
    cfg: ExportConfig, folder: Path, serving: Serving, diffusion: bool, num_classes: int, seed: int
) -> tuple[list[Conversion], dict[str, str]]:
    """The :func:`planned_files` as conversions into ``folder``, and the int8 kinds not tried. Full-integer int8 is
    calibrated on generator inputs drawn with ``seed + 1`` (not the parity inputs)."""
    from imagegen.export.parity import parity_inputs
    from imagegen.export.tflite import Conversion, representative_dataset

    files, not_tried = planned_files(cfg, diffusion)
    conversions: list[Conversion] = []
    for variant, kind in files:
        if variant != "int8":
            conversions.append(Conversion(folder / f"model_{variant}.tflite", variant))
            continue
        representative = None
        if kind == "full_integer":
            calibration = parity_inputs(serving, cfg.calibration_n, seed + 1, num_classes)
            representative = representative_dataset(calibration, serving.inputs)
        conversions.append(Conversion(folder / f"model_int8.{kind}.tflite", "int8", kind, representative))
    return conversions, not_tried


def run_export(
    params: Params,
    model_dir: Path,
    out_dir: Path | None = None,
    report_dir: Path | None = None,
    tracking: TrackingProcess | None = None,
) -> Path:
    """Export the model in ``model_dir``; write the folder described above and return its path."""
    meta = read_model_meta(model_dir)  # a missing or unreadable model.json is one line, before TensorFlow starts
    out_dir = Path(out_dir) if out_dir is not None else params.export.export_dir / meta["family"]
    report_dir = report_dir_for(params, out_dir, report_dir)
    check_output(out_dir, "export", inputs=[model_dir])
    check_output(report_dir, "report", inputs=[model_dir, out_dir], option="--report")
    from imagegen.export.graph import build_serving, export_savedmodel, require_tensorflow
    from imagegen.export.parity import check_parity, threshold_failures
    from imagegen.export.tflite import convert_all, int8_candidates, keep_int8
    from imagegen.export.workers import ConversionWorkers
    from imagegen.training.families import is_diffusion

    require_tensorflow()
    cfg = params.export
    diffusion = is_diffusion(meta["family"])
    # Started first: their TensorFlow import runs beside this process's loading and tracing.
    with ConversionWorkers(conversion_workers(cfg, diffusion)) as workers:
        loaded = load_model(model_dir)
        failed = failed_report_path(out_dir)
        failed.unlink(missing_ok=True)
        serving = build_serving(
            loaded,
            ddpm_steps=cfg.ddpm_steps,
            clip_x0=params.sample.clip_x0,
            guidance_scale=params.sample.guidance_scale,
        )
        with atomic_dir(out_dir, kind="export") as tmp:
            try:
                with phase("export.savedmodel", "compile"):
                    saved = export_savedmodel(serving, tmp / "savedmodel")
                artifacts = {"savedmodel": saved}
                num_classes = int(loaded.family.spec["num_classes"])
                conversions, not_tried = tflite_conversions(cfg, tmp, serving, diffusion, num_classes, params.seed)
                results = convert_all(saved, conversions, workers)
                for conversion, result in zip(conversions, results, strict=True):
                    if conversion.variant != "int8":  # a float variant's failure is the export's
                        if isinstance(result, ExportError):
                            raise result
                        artifacts[conversion.variant] = result
                int8_files = int8_candidates(conversions, results)
                with phase("export.parity_and_latency", "work"):
                    parity = check_parity(
                        loaded,
                        serving,
                        artifacts,
                        cfg,
                        seed=params.seed,
                        clip_x0=params.sample.clip_x0,
                        guidance_scale=params.sample.guidance_scale,
                        int8_candidates=int8_files,
                    )
                report, timing = {**parity.report, DIGEST_KEY: loaded.meta[DIGEST_KEY]}, parity.timings
                if int8_files:
                    keep_int8(int8_files, report["int8_quantization"]["kind"], tmp / "model_int8.tflite")
                    if not_tried:
                        report["int8_quantization"]["not_tried"] = not_tried
                write_json(tmp / "metrics.json", report)
                problems = threshold_failures(report, cfg)
                if problems:
                    write_json(failed, report)
                    raise ExportError(
                        f"export of {model_dir} failed its parity thresholds: {'; '.join(problems)} "
                        f"(report: {failed}; {out_dir} left unchanged)"
                    )
            except BaseException:
                workers.stop()  # before the temporary folder they write into is removed
                raise
    write_json(report_dir / "metrics.json", report)
    write_json(report_dir / RUN_FILE, timing)
    write_text(report_dir / "report.md", report_table(report))
    write_text(report_dir / MARKER, marker_text("report"))
    dataset = loaded.meta.get("dataset") or {}
    with start_run(
        params.tracking,
        process=tracking,
        run_name=f"export-{loaded.name}",
        stage="export",
        dataset_hash=dataset.get("content_hash"),
        params={
            "model": str(model_dir),
            "family": loaded.name,
            "tflite_variants": ",".join(cfg.tflite_variants),
            **({"int8_kind": report["int8_quantization"]["kind"]} if "int8_quantization" in report else {}),
            **({"ddpm_steps": report["ddpm_steps"]} if "ddpm_steps" in report else {}),
        },
    ) as run:
        run.set_tags({DIGEST_KEY: report[DIGEST_KEY]})
        run.log_metrics(
            finite_metrics(report["artifacts"])
            | finite_metrics(timing.get("artifacts", {}))
            | {f"{name}.passed": float(a["passed"]) for name, a in report["artifacts"].items()}
        )
        run.log_artifact(report_dir / RUN_FILE, "export")
        run.log_artifact(report_dir / "metrics.json", "export")
        run.log_artifact(report_dir / "report.md", "export")
    return out_dir
