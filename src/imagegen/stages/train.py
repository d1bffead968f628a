"""Stage ``train_<family>``: processed dataset -> trained model folder (weights and sample grids), plus
``<reports_dir>/train_<family>/metrics.json`` and ``train_log.csv`` (the loss curve) for dvc metrics/plots.

Tracked outputs hold only what code, params and data determine, so a re-run with the same inputs writes the
same bytes: the MLflow run id, the checkpoint a run resumed from and the speed (``images_per_sec``,
``ms_per_step``) go to the MLflow run and to ``run.json`` beside ``metrics.json`` (not tracked), never into
``model.json``, ``metrics.json`` or ``train_log.csv``. The MLflow run is tagged with the model's
``weights_digest``, which is how a model folder finds its run.

Crash safety: sample grids are staged beside the checkpoints (``<checkpoints_dir>/<family>/samples/``) and
copied into the model folder, which is written whole and swapped in at the end, so the previous model stays
intact until then. A resumed run's ``train_log.csv`` holds the whole curve: the rows stored with the
checkpoint (or, for an older checkpoint, the existing log's rows up to its step), then the new ones.

Collapse checks (:mod:`imagegen.training.collapse`): the VAE's KL per image is watched during training, and
a fixed batch of samples drawn at the end is compared with real images (non-finite, identical or flat samples
for every family); problems are logged as warnings and reported as ``collapse_warning`` in ``metrics.json``
and ``collapse`` in ``model.json``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np

from imagegen.artifact import load_requirements, save_model
from imagegen.config import Params
from imagegen.data.loader import BatchStream, to_unit_range
from imagegen.data.processed import ProcessedDataset
from imagegen.errors import ConfigError
from imagegen.fileio import write_json, write_text
from imagegen.outputs import check_output
from imagegen.profiling import phase
from imagegen.provenance import DIGEST_KEY
from imagegen.sampling import make_sampler, resolve_settings
from imagegen.timings import RUN_FILE
from imagegen.tracking import TrackingProcess, start_run
from imagegen.training.collapse import KLWatch, sample_health, sample_problems
from imagegen.training.distributed import follower_outputs, initialize_multihost, is_writer
from imagegen.training.families import build_family, family_spec
from imagegen.training.loop import Trainer
from imagegen.training.precision import accelerator, cpu_math_in_effect, dtype_policy, resolve_jit, resolve_policy
from imagegen.training.seeding import seed_everything

__all__ = ["history_csv", "run_train", "seed_everything"]

log = logging.getLogger(__name__)


TIMING_KEYS = ("images_per_sec", "ms_per_step")  # measured, not determined: MLflow and timing.json only


def history_csv(history: list[dict[str, float]]) -> str:
    """The loss curve as CSV: one row per logged step, the losses only (no speed: it differs run to run)."""
    keys = sorted({k for row in history for k in row if k != "step" and k not in TIMING_KEYS})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", *keys])
    for row in history:
        writer.writerow([int(row["step"]), *(f"{row.get(k, float('nan')):.6g}" for k in keys)])
    return buf.getvalue()


def read_history_csv(path: Path, up_to_step: int) -> list[dict[str, float]]:
    """Rows of an earlier ``train_log.csv`` up to ``up_to_step`` (for checkpoints that carry no history)."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as fh:
            rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
    except (ValueError, csv.Error):
        log.warning("%s: unreadable, the resumed loss curve starts at the checkpoint", path)
        return []
    return [row for row in rows if "step" in row and row["step"] <= up_to_step]


@phase("train.collapse_check", "work")
def collapse_report(
    params: Params,
    family_name: str,
    family: Any,
    sample_fn: Any,
    dataset: ProcessedDataset,
    kl: KLWatch | None,
    history: list[dict[str, float]],
) -> tuple[dict[str, float], list[str]]:
    """Collapse figures for metrics.json and the problems found (see the module docstring)."""
    n = max(2, params.train.grid_size)
    train = dataset.split("train")
    idx = np.sort(np.random.default_rng([params.seed, 4]).permutation(train.images.shape[0])[:n])
    real = to_unit_range(np.asarray(train.images[idx]))
    samples = sample_fn(family, n, np.random.default_rng([params.seed, 3]))
    health = sample_health(samples, real)
    problems = sample_problems(health, params.train.min_sample_diversity, params.train.min_sample_contrast)
    figures = {f"samples.{k}": v for k, v in health.items()}
    if kl is not None:
        figures["kl_per_image"] = kl.final_kl(history)
        threshold = kl.threshold
        if np.isfinite(figures["kl_per_image"]) and figures["kl_per_image"] < threshold:
            problems.insert(
                0,
                f"KL per image {figures['kl_per_image']:.3g} < vae.min_kl_per_image={threshold:g} (posterior collapse)",
            )
    figures["collapse_warning"] = float(bool(problems))
    for problem in problems:
        log.warning("%s: %s", family_name, problem)
    return figures, problems


def run_train(
    params: Params,
    family_name: str,
    data_dir: Path | None = None,
    out_dir: Path | None = None,
    resume: bool = False,
    show_progress: bool = True,
    tracking: TrackingProcess | None = None,
) -> Path:
    """Train ``family_name`` on the processed dataset; write the model folder and return its path."""
    if initialize_multihost() and not is_writer():  # JAX_* variables: process 0 writes, the others train
        out_dir, params = follower_outputs(params, family_name)
    data_dir = Path(data_dir) if data_dir is not None else params.data.output_dir
    out_dir = Path(out_dir) if out_dir is not None else params.train.models_dir / family_name
    check_output(out_dir, "model", inputs=[data_dir])  # before any work: never after minutes of training
    ckpt_dir = params.train.checkpoints_dir / family_name
    report_dir = params.train.reports_dir / f"train_{family_name}"
    cfg = params.train
    spec = family_spec(family_name)
    family_cfg = getattr(params, family_name)
    dataset = ProcessedDataset.open(data_dir)
    train_count = int(dataset.manifest["counts"].get("train", 0))
    batch_size = family_cfg.effective_batch_size(cfg)
    if batch_size > train_count:  # every batch would repeat images; refused before a network is built
        key = f"{family_name}.batch_size" if family_cfg.batch_size else "train.batch_size"
        raise ConfigError(
            f"{key} = {batch_size}: larger than the training split of {data_dir} "
            f"({train_count} images); expected at most {train_count}"
        )

    seed_everything(params.seed)
    policy = resolve_policy(cfg.mixed_precision)
    jit = resolve_jit(cfg.jit_compile)
    cpu_math = cpu_math_in_effect()  # what `imagegen train` asked for (train.cpu_math), if the CPU has it
    with dtype_policy(policy), phase("model.build", "work"):
        trained = load_requirements(spec, family_cfg, dataset.image_shape)
        family = build_family(
            family_name, params, dataset.image_shape, dataset.num_classes, dataset=dataset, trained=trained
        )
    stream = BatchStream(dataset.split("train"), batch_size, params.seed)
    # One sampler (one compiled predictor) for every grid and the collapse check: a fresh one per grid would
    # recompile the diffusion network each time (seconds with XLA on CPU).
    sample = make_sampler(family, resolve_settings(params.sample))

    def sample_fn(fam: Any, n: int, rng: np.random.Generator) -> np.ndarray:
        return sample(n, rng)

    samples_stage = ckpt_dir / "samples"  # grids wait here, beside the resume state, until the model is saved
    if not resume:
        shutil.rmtree(samples_stage, ignore_errors=True)
    kl_watch = KLWatch(family_cfg.min_kl_per_image, family_cfg.steps // 5) if spec.watches_kl else None

    run_params = {"family": family_name, "seed": params.seed}
    for section in ("data", "train", family_name, "sample"):
        run_params.update({f"{section}.{k}": v for k, v in getattr(params, section).model_dump(mode="json").items()})
    with start_run(
        params.tracking,
        process=tracking,
        run_name=f"train-{family_name}",
        stage=f"train_{family_name}",
        dataset_hash=dataset.content_hash,
        dataset_dir=dataset.path,  # logged as the run's mlflow dataset input
        params=run_params,
        tags={
            "keras.backend": keras.backend.backend(),
            "device": accelerator(),
            "dtype_policy": policy,
            "cpu_math": cpu_math,
            "jit_compile": str(jit).lower(),
        },
    ) as run:
        trainer = Trainer(
            family,
            stream,
            cfg,
            seed=params.seed,
            checkpoint_dir=ckpt_dir,
            samples_dir=samples_stage,
            sample_fn=sample_fn,
            on_metrics=lambda step, m: _on_metrics(run, kl_watch, step, m),
            on_grid=lambda step, path, _: run.log_artifact(path, "samples"),
            show_progress=show_progress,
            dataset_hash=dataset.content_hash,
        )
        resumed = trainer.resume() if resume else None
        if not resume:
            trainer.clear_checkpoints()  # removed once this run's first checkpoint exists
        elif resumed is not None and not trainer.previous_history and trainer.step:
            trainer.previous_history = read_history_csv(report_dir / "train_log.csv", trainer.step)
        result = trainer.fit(family_cfg.steps)
        history = trainer.full_history
        figures, problems = collapse_report(params, family_name, family, sample_fn, dataset, kl_watch, history)

        meta = {
            "dataset": {"name": dataset.manifest["dataset"], "content_hash": dataset.content_hash},
            "step": result.step,
            "trained_with": {
                "backend": keras.backend.backend(),
                "device": accelerator(),
                "dtype_policy": policy,
                "cpu_math": cpu_math,
                "jit_compile": jit,
            },
            "stopped_early": trainer.stopped_early,
            "collapse": {"warning": bool(problems), "problems": problems, **figures},
        }
        save_model(family, out_dir, meta, include={"samples": samples_stage})
        digest = json.loads((out_dir / "model.json").read_text())[DIGEST_KEY]
        run.set_tags({DIGEST_KEY: digest, "resumed_from": str(resumed) if resumed else "none"})
        run_facts = {"mlflow_run_id": run.run_id, "resumed_from": str(resumed) if resumed else None}
        metrics = {
            "step": result.step,
            **{f"final.{k}": v for k, v in _final_values(result.metrics, history).items()},
            "parameters": family.trainable_count(),
            DIGEST_KEY: digest,
            **figures,
        }
        timing = {"images_per_sec": result.images_per_sec, "ms_per_step": result.ms_per_step}
        write_json(report_dir / "metrics.json", metrics)
        write_json(report_dir / RUN_FILE, {**timing, **run_facts})
        write_text(report_dir / "train_log.csv", history_csv(history))
        logged = {**metrics, **timing}
        run.log_metrics({k: v for k, v in logged.items() if isinstance(v, int | float) and np.isfinite(v)})
        for item in [out_dir / "model.json", *(out_dir / f for f in os.listdir(out_dir) if f.endswith(".weights.h5"))]:
            run.log_artifact(item, "model")
        run.log_artifact(report_dir / "train_log.csv")
    return out_dir


def _final_values(values: dict[str, float], history: list[dict[str, float]]) -> dict[str, float]:
    """The last logged values (from the history when this process had no step left to run)."""
    if values or not history:
        return values
    return {k: v for k, v in history[-1].items() if k != "step" and k not in TIMING_KEYS}


def _on_metrics(run: Any, kl_watch: KLWatch | None, step: int, metrics: dict[str, float]) -> None:
    run.log_metrics(metrics, step=step)
    if kl_watch is not None:
        kl_watch(step, metrics)
