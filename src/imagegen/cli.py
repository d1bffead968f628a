"""The ``imagegen`` command line: one sub-command per pipeline stage, as ``dvc.yaml`` calls them.

Every command takes ``--params/-p`` (default ``params.yaml``) and ``-S key=value`` overrides spelled as for
``dvc exp run -S``. Errors caused by input print one message naming the culprit and exit with status 2.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from imagegen.config import Params, dump_params, load_params
from imagegen.errors import ImagegenError
from imagegen.profiling import phase

if TYPE_CHECKING:
    from imagegen.tracking.process import TrackingProcess

app = typer.Typer(
    name="imagegen",
    help="Train, distill, evaluate, export and ship image generators (DVC + Prefect + MLflow).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)
console = Console()

F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _global_options(
    verbose: Annotated[
        bool,
        typer.Option("--verbose", help="keep TensorFlow/XLA/CUDA start-up logs (also: IMAGEGEN_VERBOSE=1)"),
    ] = False,
) -> None:
    """Quiet by default: third-party start-up noise is silenced before any stage imports TensorFlow."""
    from imagegen.profiling import activate_from_env
    from imagegen.quiet import configure, verbose_requested

    configure(verbose_requested(verbose), _print_warning)
    activate_from_env()  # IMAGEGEN_PROFILE=<file or folder>: phase timings for bench/pipeline_profile.py


def _print_warning(message: str) -> None:
    err_console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)


ParamsOpt = Annotated[
    Path | None,
    typer.Option("--params", "-p", help="params file (default: ./params.yaml, or built-in defaults if absent)"),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="override a param, e.g. -S data.name=mnist (repeatable)"),
]


def user_errors(fn: F) -> F:
    """Turn :class:`ImagegenError` into one red line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ImagegenError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


StepsOpt = Annotated[
    int | None,
    typer.Option(min=1, help="DDIM steps (diffusion only; default: the model's own grid, else sample.steps)"),
]
SamplerOpt = Annotated[str | None, typer.Option(help="ddim | ddpm (diffusion only; default sample.sampler)")]
EtaOpt = Annotated[float | None, typer.Option(min=0.0, help="DDIM eta (diffusion only; default sample.eta)")]


def _load(params: Path | None, overrides: list[str] | None, *, tracks: bool = True) -> Params:
    cfg = load_params(params, overrides or [])
    if tracks:  # an unusable MLflow store: one line now, before TensorFlow is even imported
        from imagegen.tracking import preflight_store

        preflight_store(cfg.tracking)
    return cfg


@contextlib.contextmanager
def _tracking_process(cfg: Params) -> Iterator[TrackingProcess | None]:
    """The stage's MLflow client, started in a child process now, before the stage imports TensorFlow, so that
    mlflow's import overlaps TensorFlow's on another core (:mod:`imagegen.tracking.process`); None when tracking
    is off. Call after :func:`_load`, which has checked the store."""
    if not cfg.tracking.enabled:
        yield None
        return
    from imagegen.quiet import verbose_in_effect
    from imagegen.tracking import resolve_tracking_uri
    from imagegen.tracking.process import TrackingProcess

    with TrackingProcess(cfg.tracking, resolve_tracking_uri(cfg.tracking), verbose=verbose_in_effect()) as process:
        yield process


def _cpu_math(cfg: Params, family: str | None) -> contextlib.AbstractContextManager[bool]:
    """``train.cpu_math`` for a stage that trains ``family`` (None: unknown, float32 unless asked for bf16):
    :func:`imagegen.startup.cpu_math_requested` around the stage."""
    from imagegen.startup import cpu_math_requested
    from imagegen.training.families import FAMILIES, family_spec
    from imagegen.training.precision import resolve_cpu_math

    setting = cfg.train.cpu_math
    return cpu_math_requested(resolve_cpu_math(setting, family_spec(family)) if family in FAMILIES else setting)


def _model_family(folder: Path) -> str | None:
    """The family a model folder's model.json names, or None (the stage reports a missing or broken one)."""
    try:
        family = json.loads((folder / "model.json").read_text()).get("family")
    except (OSError, ValueError, AttributeError):
        return None
    return family if isinstance(family, str) else None


def _sampler_overrides(sampler: str | None, steps: int | None, eta: float | None) -> dict[str, Any]:
    """The sampler flags the user actually gave (None = not given; see imagegen.sampler_settings)."""
    if sampler is not None and sampler not in ("ddim", "ddpm"):
        raise ImagegenError(f"--sampler {sampler!r}: expected ddim or ddpm")
    return {k: v for k, v in {"sampler": sampler, "steps": steps, "eta": eta}.items() if v is not None}


@app.command("params")
@user_errors
def params_cmd(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved, validated parameters (params.yaml + defaults + -S overrides) as YAML."""
    sys.stdout.write(dump_params(_load(params, set_, tracks=False)))


@app.command("ingest")
@user_errors
def ingest_cmd(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default data.processed_dir/<name>)")] = None,
) -> None:
    """Fetch, verify and convert a dataset into the processed format."""
    cfg = _load(params, set_)
    with _tracking_process(cfg) as tracking:
        from imagegen.stages.ingest import run_ingest

        with phase("stage", "work"):
            out_dir = run_ingest(cfg, out, tracking=tracking)
    from imagegen.data.processed import ProcessedDataset

    manifest = ProcessedDataset.open(out_dir).manifest
    counts = ", ".join(f"{k}={v}" for k, v in manifest["counts"].items())
    console.print(f"ingested [bold]{manifest['dataset']}[/] -> {out_dir} ({counts}; {manifest['content_hash']})")


@app.command("train")
@user_errors
def train_cmd(
    family: Annotated[str, typer.Argument(help="dcgan | vae | ddpm | ldm | stylegan2")],
    params: ParamsOpt = None,
    set_: SetOpt = None,
    data: Annotated[
        Path | None, typer.Option(help="processed dataset folder (default data.processed_dir/<name>)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="model folder (default train.models_dir/<family>)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the latest checkpoint")] = False,
) -> None:
    """Train one model family on the processed dataset."""
    cfg = _load(params, set_)
    from imagegen.training.families import FAMILIES

    if family not in FAMILIES:
        raise ImagegenError(f"family {family!r}: expected one of {', '.join(FAMILIES)}")
    with _tracking_process(cfg) as tracking:
        from imagegen.stages.train import run_train

        with _cpu_math(cfg, family), phase("stage", "work"):
            out_dir = run_train(cfg, family, data_dir=data, out_dir=out, resume=resume, tracking=tracking)
    console.print(f"trained [bold]{family}[/] -> {out_dir}")


@app.command("sample")
@user_errors
def sample_cmd(
    model: Annotated[Path, typer.Option(help="trained model folder (holds model.json)")],
    out: Annotated[Path, typer.Option(help="folder for grid.png and samples.npz")],
    n: Annotated[int, typer.Option(min=1, help="number of images")] = 64,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    steps: StepsOpt = None,
    sampler: SamplerOpt = None,
    eta: EtaOpt = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    prompt: Annotated[str | None, typer.Option(help="caption for every image (caption-conditioned DDPM only)")] = None,
    guidance: Annotated[
        float | None, typer.Option(min=0.0, help="classifier-free guidance scale (default sample.guidance_scale)")
    ] = None,
    truncation: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="truncation of w towards its mean, in (0, 1] (style-based generators)"),
    ] = None,
) -> None:
    """Generate images from a trained model: a PNG grid and an .npz of uint8 (N,H,W,C).

    A distilled student samples on its own DDIM grid (from its model.json) unless --steps/--sampler is given.
    A caption model draws every image for --prompt (unknown words are read as <unk>, with a warning).
    """
    from imagegen.stages.sample import run_sample

    if truncation == 0.0:
        raise ImagegenError("--truncation 0: expected a value in (0, 1] (1: no truncation)")
    cfg = _load(params, set_, tracks=False)
    overrides = _sampler_overrides(sampler, steps, eta)
    given = {"prompt": prompt, "guidance_scale": guidance, "truncation": truncation}
    overrides.update({k: v for k, v in given.items() if v is not None})
    out_dir = run_sample(model, out, n, seed, params=cfg, **overrides)
    console.print(f"wrote {out_dir / 'grid.png'} and {out_dir / 'samples.npz'}")


@app.command("train-features")
@user_errors
def train_features_cmd(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    data: Annotated[Path | None, typer.Option(help="processed dataset folder")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default evaluate.features_dir)")] = None,
) -> None:
    """Train the evaluation feature extractor (a small CNN classifier) on the real training split."""
    cfg = _load(params, set_)
    with _tracking_process(cfg) as tracking:
        from imagegen.stages.train_features import run_train_features

        with phase("stage", "work"):
            out_dir = run_train_features(cfg, data_dir=data, out_dir=out, verbose=2, tracking=tracking)
    import json

    scores = json.loads((out_dir / "model.json").read_text())["scores"]
    console.print(f"feature extractor -> {out_dir} (test accuracy {scores['test_accuracy']:.4f})")


@app.command("evaluate")
@user_errors
def evaluate_cmd(
    out: Annotated[Path, typer.Option(help="folder for metrics.json, class_histogram.csv, grid.png, report.md")],
    model: Annotated[Path | None, typer.Option(help="trained model folder to sample from")] = None,
    samples: Annotated[Path | None, typer.Option(help=".npz with uint8 'images' (N,H,W,C) made anywhere")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    data: Annotated[Path | None, typer.Option(help="processed dataset folder (the held-out split is used)")] = None,
    features: Annotated[
        Path | None, typer.Option(help="feature extractor folder (default evaluate.features_dir)")
    ] = None,
    steps: StepsOpt = None,
    sampler: SamplerOpt = None,
    eta: EtaOpt = None,
) -> None:
    """FID, KID, precision/recall, density/coverage and class coverage of generated images, beside the real-vs-real
    floor."""
    cfg = _load(params, set_)
    with _tracking_process(cfg) as tracking:
        from imagegen.stages.evaluate import run_evaluate

        with phase("stage", "work"):
            out_dir = run_evaluate(
                cfg,
                out,
                model_dir=model,
                samples=samples,
                data_dir=data,
                features_dir=features,
                sampler=_sampler_overrides(sampler, steps, eta),
                tracking=tracking,
            )
    sys.stdout.write((out_dir / "report.md").read_text())


@app.command("distill")
@user_errors
def distill_cmd(
    teacher: Annotated[Path, typer.Option(help="trained teacher model folder (holds model.json)")],
    method: Annotated[
        str,
        typer.Option(
            help=(
                "progressive (DDPM: halve the sampling steps per round) | architecture (a narrower network, any family)"
                " | knowledge (the feature classifier, e.g. models/features: a narrower one on its softened outputs)"
            )
        ),
    ],
    params: ParamsOpt = None,
    set_: SetOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="student folder (default train.models_dir/<family>_student_<method>)")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="processed dataset folder (default data.processed_dir/<name>)")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="keep finished rounds and continue from the latest checkpoint")
    ] = False,
) -> None:
    """Distil a teacher into a student: fewer sampling steps (progressive) or a narrower network (architecture)."""
    cfg = _load(params, set_)
    with _tracking_process(cfg) as tracking:
        from imagegen.stages.distill import run_distill

        with _cpu_math(cfg, _model_family(teacher)), phase("stage", "work"):
            student = run_distill(cfg, teacher, method, out_dir=out, data_dir=data, resume=resume, tracking=tracking)
    console.print(f"distilled [bold]{teacher}[/] ({method}) -> {student}")


@app.command("export")
@user_errors
def export_cmd(
    model: Annotated[Path, typer.Option(help="trained (or distilled) model folder")],
    out: Annotated[Path | None, typer.Option(help="export folder (default export.export_dir/<family>)")] = None,
    report: Annotated[
        Path | None, typer.Option(help="folder for the metrics.json copy and report.md (default reports/export_<out>)")
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """SavedModel + TFLite (float32/float16/int8), each checked for parity with Keras and timed."""
    cfg = _load(params, set_)
    with _tracking_process(cfg) as tracking:
        from imagegen.stages.export import report_dir_for, report_table, run_export

        with phase("stage", "work"):
            out_dir = run_export(cfg, model, out, report, tracking=tracking)
    import json

    from imagegen.timings import RUN_FILE

    timing = json.loads((report_dir_for(cfg, out_dir, report) / RUN_FILE).read_text())
    sys.stdout.write(report_table(json.loads((out_dir / "metrics.json").read_text()), timing))
    console.print(f"exported -> {out_dir}")


@app.command("register")
@user_errors
def register_cmd(
    model: Annotated[Path, typer.Option(help="trained model folder")],
    evaluation: Annotated[Path, typer.Option(help="metrics.json written by `imagegen evaluate` for that model")],
    export_dir: Annotated[
        Path | None, typer.Option("--export", help="export folder written by `imagegen export` (holds metrics.json)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="record of what was registered (default reports/register_<family>.json)")
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Register the model in MLflow as a new version with the alias `challenger`."""
    from imagegen.stages.register import run_record, run_register

    cfg = _load(params, set_)
    with phase("stage", "work"):
        out = run_register(cfg, model, evaluation, export_dir, out)
    version = json.loads(run_record(out).read_text())["version"]
    console.print(out.read_text(), soft_wrap=True)
    console.print(f"registered as version {version}", soft_wrap=True)


@app.command("promote")
@user_errors
def promote_cmd(
    name: Annotated[str, typer.Argument(help="registered model name, e.g. imagegen-ddpm-digits")],
    force: Annotated[bool, typer.Option("--force", help="promote even if the gate refuses (needs --reason)")] = False,
    reason: Annotated[str | None, typer.Option(help="why the gate is overridden (recorded on the version)")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Move `champion` to the `challenger` version if the gate passes; exit 3 if refused.

    The gate: export parity passed, no collapse, the absolute floor (registry.*), and a better
    registry.gate_metric than the champion's. Promoting the current champion again changes nothing (exit 0).
    """
    from imagegen.registry import promote

    if force and not reason:
        raise ImagegenError("--force needs --reason TEXT: the override is recorded on the model version")
    decision = promote(_load(params, set_), name, force_reason=reason if force else None)
    if not decision.changed:  # idempotent: the challenger already is the champion, nothing written
        verdict = "[bold]unchanged[/]"
    else:
        verdict = "[bold green]promoted[/]" if decision.promoted else "[bold yellow]refused[/]"
    console.print(f"{name} v{decision.version}: {verdict}: {decision.reason}", soft_wrap=True)
    if not decision.promoted:
        raise typer.Exit(code=3)


@app.command("compare")
@user_errors
def compare_cmd(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    format_: Annotated[str, typer.Option("--format", help="table | markdown | json")] = "table",
    check: Annotated[
        bool,
        typer.Option("--check", help="exit 3 when a report was made from other weights than its model folder holds"),
    ] = False,
) -> None:
    """The pipeline's models side by side: evaluation, export and registration, and whether each report was
    made from the weights now in the model folder.

    One row per model of evaluate.models and export.ship, read from the files the stages wrote (no MLflow, no
    TensorFlow); the weights digest is computed afresh from each folder's weight files.
    """
    from imagegen.comparison import COLUMNS, as_markdown, as_records, model_rows, table_cells

    if format_ not in ("table", "markdown", "json"):
        raise ImagegenError(f"--format {format_!r}: expected table, markdown or json")
    rows = model_rows(_load(params, set_, tracks=False))
    if format_ == "json":
        sys.stdout.write(json.dumps(as_records(rows), indent=2, sort_keys=True) + "\n")
    elif format_ == "markdown":
        sys.stdout.write(as_markdown(rows))
    else:
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title="imagegen models", title_justify="left")
        for column in COLUMNS:  # names and figures never wrap; the provenance phrase folds
            table.add_column(column, no_wrap=column != COLUMNS[-1], overflow="fold")
        for row in rows:
            table.add_row(*(escape(cell) for cell in table_cells(row)))
        # piped or logged, the table keeps its natural width rather than the 80 columns rich assumes
        (console if console.is_terminal else Console(width=240)).print(table)
    stale = [f"{row.name}: {', '.join(row.stale)}" for row in rows if row.stale] if check else []
    if stale:
        err_console.print(
            f"[bold yellow]stale:[/] {escape('; '.join(stale))} (made from other weights); dvc repro remakes them",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=3)


def freeze_heap_at_exit() -> None:
    """Move every live object out of the garbage collector's reach before the interpreter shuts down.

    With TensorFlow and Keras loaded, CPython's collections during shutdown walk millions of objects: seconds
    of every stage process, spent after the stage's files are written. Frozen objects are still freed
    by reference counting as modules are cleared; only reference cycles among them are left to the OS, which
    reclaims the whole process a moment later. Registered first, so it runs after every other exit handler
    (MLflow's, the profile's)."""
    gc.freeze()


def main() -> None:
    """The ``imagegen`` console script (and ``python -m imagegen``): the Typer app, without the integrations
    TensorFlow would import for nothing, on oneDNN kernels (:mod:`imagegen.startup`) and without a shutdown
    collection."""
    from imagegen import startup

    atexit.register(freeze_heap_at_exit)
    startup.set_tensorflow_defaults()
    startup.install()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
