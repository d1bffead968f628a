"""Serving speed on ONE CPU core: images/s and ms/image of every way the project draws images, in one table.

Rows (model x runtime x batch):

* ``ddpm_teacher``: the DDPM (``models/ddpm``) with DDIM-50 through the Python sampler (``imagegen.sampling``,
  XLA-compiled U-Net); it has no export of its own (``export.ship`` ships the student), so no SavedModel/TFLite.
* ``ddpm_student``: the 4-step progressive student (``models/ddpm_student_progressive/final``) through the
  Python sampler, the SavedModel and every TFLite file: ``float32``, ``float16``, ``int8_dynamic_range``,
  ``int8_full_integer`` (the int8 kind the export did not keep is converted here, into a temporary folder).
* ``dcgan`` and ``vae``: the generator / decoder, same runtimes.

Exports come from ``--exports`` (default ``exports/<name>``); a missing one is made with the export stage
(``imagegen.stages.export.run_export``, tracking off) into a temporary folder.

One core: before TensorFlow is imported the process pins itself to CPU ``--core`` (``os.sched_setaffinity``,
what ``taskset -c 0`` does) and sets ``OMP_NUM_THREADS=1``; TensorFlow's intra- and inter-op pools are set to
one thread (``tf.config.threading``) and every TFLite interpreter gets ``num_threads=1`` (XNNPACK delegate as
TFLite applies it by default). Timing: one warm-up call (compiles/allocates), then calls on the same batch
until ``--min-time`` seconds and at least 3 calls; the median call / batch is ms per image. The load average
is printed and stored: figures taken on a busy machine are not the idle machine's.

    python bench/serving.py                       # table on stdout, JSON to reports/serving.json
    python bench/serving.py --batches 1 32 --out /tmp/serving.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

MODELS = {  # name -> (model folder, export folder name or None, Python sampler overrides)
    "ddpm_teacher": ("models/ddpm", None, {"steps": 50}),
    "ddpm_student": ("models/ddpm_student_progressive/final", "ddpm_student", {}),
    "dcgan": ("models/dcgan", "dcgan", {}),
    "vae": ("models/vae", "vae", {}),
}
TFLITE = ("float32", "float16", "int8_dynamic_range", "int8_full_integer")


def pin_to_one_core(core: int) -> list[int]:
    """Pin this process (and the threads it starts later) to ``core``; one thread per runtime pool."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
        return sorted(os.sched_getaffinity(0))
    return []


def timed(call: Callable[[], Any], min_time: float, min_calls: int = 3) -> float:
    """Median seconds per call after one warm-up call."""
    call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def other_int8(export_dir: Path, tmp: Path, params: Any, loaded: Any) -> dict[str, Path]:
    """``{int8 kind: path}`` for both kinds: the export's own ``model_int8.tflite`` and the other kind, converted."""
    import json

    from imagegen.export.graph import build_serving
    from imagegen.export.parity import parity_inputs
    from imagegen.export.tflite import INT8_KINDS, write_int8_candidates

    metrics = json.loads((export_dir / "metrics.json").read_text()) if (export_dir / "metrics.json").exists() else {}
    kept = (metrics.get("int8_quantization") or {}).get("kind", "dynamic_range")
    out = {kept: export_dir / "model_int8.tflite"} if (export_dir / "model_int8.tflite").exists() else {}
    missing = [kind for kind in INT8_KINDS if kind not in out]
    if missing:
        cfg = params.export
        serving = build_serving(loaded, ddpm_steps=cfg.ddpm_steps, clip_x0=params.sample.clip_x0)
        calibration = parity_inputs(serving, cfg.calibration_n, params.seed + 1, int(loaded.family.spec["num_classes"]))
        out |= write_int8_candidates(export_dir / "savedmodel", tmp, missing, calibration, serving.inputs)
    return out


def bench_model(name: str, args: argparse.Namespace, params: Any, tmp: Path, log: Callable[[dict], None]) -> None:
    import numpy as np

    from imagegen.artifact import load_model
    from imagegen.export.graph import build_serving
    from imagegen.export.parity import parity_inputs, savedmodel_runner, tflite_runner
    from imagegen.sampling import make_sampler, resolve_settings
    from imagegen.training.families import family_spec

    model_dir, export_name, overrides = MODELS[name]
    model_dir = args.root / model_dir
    if not (model_dir / "model.json").exists():
        print(f"skip {name}: no model at {model_dir}", file=sys.stderr)
        return
    loaded = load_model(model_dir)
    settings = resolve_settings(params.sample, loaded.meta, overrides)
    steps = len(settings.timesteps) if settings.timesteps else settings.steps
    label = f"{name} (DDIM-{steps})" if family_spec(loaded.name).diffusion else name
    sample = make_sampler(loaded.family, settings)
    for batch in args.batches:
        rng = np.random.default_rng(0)
        log(
            {
                "model": label,
                "runtime": "python sampler",
                "batch": batch,
                "s": timed(partial(sample, batch, rng), args.min_time),
            }
        )
    if export_name is None:
        return
    export_dir = args.exports / export_name
    if not (export_dir / "savedmodel").is_dir():
        from imagegen.stages.export import run_export

        print(f"{name}: no export at {export_dir}; exporting into {tmp}", file=sys.stderr)
        export_dir = run_export(params, model_dir, tmp / export_name, report_dir=tmp / f"report_{export_name}")
    files = {v: export_dir / f"model_{v}.tflite" for v in ("float32", "float16")}
    files |= {f"int8_{kind}": path for kind, path in other_int8(export_dir, tmp / name, params, loaded).items()}
    serving = build_serving(loaded, ddpm_steps=params.export.ddpm_steps, clip_x0=params.sample.clip_x0)
    runners: dict[str, Callable[[Any], Any]] = {"savedmodel": savedmodel_runner(export_dir / "savedmodel")}
    for variant in TFLITE:
        if files.get(variant) is not None and files[variant].exists():
            runners[f"tflite {variant}"] = tflite_runner(files[variant], num_threads=1)
    num_classes = int(loaded.family.spec["num_classes"])
    for runtime, run in runners.items():
        for batch in args.batches:
            inputs = parity_inputs(serving, batch, 0, num_classes)
            log({"model": label, "runtime": runtime, "batch": batch, "s": timed(partial(run, inputs), args.min_time)})


def table(rows: list[dict]) -> str:
    head = f"{'model':<24} {'runtime':<26} {'batch':>5} {'ms/image':>9} {'images/s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<24} {r['runtime']:<26} {r['batch']:>5} {r['ms_per_image']:>9.3f} {r['images_per_s']:>9.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="project folder holding models/")
    parser.add_argument("--exports", type=Path, default=None, help="export folders (default <root>/exports)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per row (>= 3 calls)")
    parser.add_argument("--core", type=int, default=0, help="the one CPU core to run on")
    parser.add_argument("--out", type=Path, default=Path("reports/serving.json"))
    args = parser.parse_args(argv)
    args.exports = args.exports or args.root / "exports"
    affinity = pin_to_one_core(args.core)

    from imagegen import startup

    startup.set_tensorflow_defaults()  # the SavedModel rows on the kernels the `imagegen` command uses
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from imagegen.config import load_params
    from imagegen.fileio import write_json

    params_file = args.root / "params.yaml"
    params = load_params(params_file if params_file.exists() else None, ["tracking.enabled=false"])
    load_start = os.getloadavg()
    print(f"one core: affinity {affinity}, TF intra/inter-op threads 1, TFLite num_threads 1; loadavg {load_start}")
    rows: list[dict] = []

    def log(row: dict) -> None:
        s = row.pop("s")
        row |= {"ms_per_image": 1000.0 * s / row["batch"], "images_per_s": row["batch"] / s}
        rows.append(row)
        print(f"  {row['model']:<24} {row['runtime']:<26} b={row['batch']:<3} {row['ms_per_image']:9.3f} ms/image")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        for name in args.models:
            bench_model(name, args, params, Path(tmp), log)
    print()
    print(table(rows))
    result = {
        "affinity": affinity,
        "threads": {"tensorflow_intra_op": 1, "tensorflow_inter_op": 1, "tflite": 1},
        "cpu": platform.processor() or platform.machine(),
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "wall_s": time.perf_counter() - started,
        "rows": rows,
    }
    write_json(args.out, result)
    print(f"\nloadavg at the end {os.getloadavg()}; wall {result['wall_s']:.0f} s; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
