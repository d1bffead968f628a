"""A whole distillation: the progressive round loop or the architecture run, resume and cleanup.

:func:`distill` measures the teacher, trains the student(s) with the shared
:class:`~imagegen.training.loop.Trainer`, saves each as an ordinary model folder and measures it
beside its teacher on the same noise (:class:`~imagegen.distill.side_by_side.SideBySide`). It
returns the report and the image rows; the stage writes them. The stage's MLflow parent run reaches
this module only as :attr:`DistillJob.open_run`, which opens one child run per round (or for the
architecture run); mlflow itself is never imported here.

Resume: a round whose folder already holds a finished student of exactly that round is kept; an
interrupted one continues from its latest checkpoint (``<checkpoints>/<tag>/round_<k>``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from imagegen.artifact import MODEL_FILE, LoadedModel, load_model, save_model
from imagegen.config import Params
from imagegen.data.loader import BatchStream
from imagegen.data.processed import ProcessedDataset
from imagegen.distill.architecture import build_architecture
from imagegen.distill.progressive import build_progressive, next_round, plan_rounds, sampling_record
from imagegen.distill.setup import Distillation
from imagegen.distill.side_by_side import Measurement, SideBySide
from imagegen.outputs import write_marker
from imagegen.provenance import DIGEST_KEY
from imagegen.sampler_settings import SamplerSettings
from imagegen.sampling import resolve_settings
from imagegen.tracking import finite_metrics
from imagegen.training.families import family_spec
from imagegen.training.loop import Trainer, TrainResult
from imagegen.training.precision import accelerator, cpu_math_in_effect, dtype_policy
from imagegen.training.steppers import Stepper

OpenRun = Callable[[str, dict[str, Any]], AbstractContextManager[Any]]
"""``open_run(name, tags)``: a context manager yielding a run (``log_metrics``, ``run_id``)."""


@dataclass
class DistillJob:
    """Everything one distillation reads: settings, data, the teacher, where outputs go."""

    params: Params
    method: str
    dataset: ProcessedDataset
    teacher: LoadedModel
    teacher_dir: Path
    out_root: Path
    checkpoints: Path
    side_by_side: SideBySide
    policy: str
    open_run: OpenRun
    resume: bool = False
    show_progress: bool = True
    notes: list[str] = field(default_factory=list)


@dataclass
class Fitted:
    """One student's training: the result, whether it stopped early (``train.max_minutes``), the checkpoint it
    resumed from, and the stepper that trained it (reusable by the next progressive round)."""

    result: TrainResult
    stopped_early: bool
    resumed: str | None
    stepper: Stepper


@dataclass
class DistillOutcome:
    """The final student's folder, the report (``metrics.json``) and one image row per model."""

    final: Path
    report: dict[str, Any]
    rows: list[np.ndarray]


def distill(job: DistillJob) -> DistillOutcome:
    """Run ``job.method``; the report puts the teacher and its students side by side."""
    if not job.resume:
        clear_outputs(job.out_root, job.method)
    if job.method == "progressive":  # a folder of round folders, marked as imagegen's (see imagegen.outputs)
        job.out_root.mkdir(parents=True, exist_ok=True)
        write_marker(job.out_root, "students")
    teacher_sampling = resolve_settings(job.params.sample, job.teacher.meta)
    teacher = job.side_by_side.measure(job.teacher.family, teacher_sampling)
    report: dict[str, Any] = {
        "method": job.method,
        "family": job.teacher.name,
        "teacher_path": str(job.teacher_dir),
        "teacher": teacher.figures,
    }
    rows = [teacher.images]
    if job.method == "progressive":
        final = _progressive(job, report, rows)
    else:
        final = _architecture(job, report, rows, teacher, teacher_sampling)
    if job.side_by_side.floor is not None:
        report["real_floor"] = job.side_by_side.floor
    report["notes"] = job.side_by_side.notes + job.notes
    report["student_path"] = str(final)
    return DistillOutcome(final, report, rows)


# --------------------------------------------------------------------------------------------------
# Training one student, resume and cleanup


def fit_student(
    job: DistillJob,
    distillation: Distillation,
    steps: int,
    seed: int,
    checkpoints: Path,
    run: Any,
    stepper: Stepper | None = None,
) -> Fitted:
    """Train with the shared Trainer. ``stepper``: the previous round's, to reuse its compiled step (see
    :func:`imagegen.distill.progressive.next_round`)."""
    params = job.params
    batch_size = params.distill.batch_size or params.train.batch_size
    stream = BatchStream(job.dataset.split("train"), batch_size, seed)
    trainer = Trainer(
        distillation.family,
        stream,
        params.train,
        seed=seed,
        checkpoint_dir=checkpoints,
        on_metrics=lambda step, m: run.log_metrics(m, step=step),
        show_progress=job.show_progress,
        stepper=stepper,
    )
    resumed = trainer.resume() if job.resume else None
    if not job.resume:
        trainer.clear_checkpoints()
    result = trainer.fit(steps)
    return Fitted(result, trainer.stopped_early, str(resumed) if resumed else None, trainer.stepper)


def student_meta(
    job: DistillJob,
    teacher_meta: dict[str, Any],
    teacher_path: Path,
    trained: Fitted,
    distillation: dict[str, Any],
) -> dict[str, Any]:
    """The student's ``model.json`` extras: where it comes from, how it was trained."""
    result, stopped_early = trained.result, trained.stopped_early
    return {
        "dataset": teacher_meta.get("dataset"),
        "distilled_from": {
            "path": str(teacher_path),
            "family": teacher_meta.get("family"),
            "dataset": teacher_meta.get("dataset"),
            DIGEST_KEY: teacher_meta.get(DIGEST_KEY),  # the weights it learned from
        },
        "distillation": distillation,
        "step": result.step,
        "final_metrics": result.metrics,
        "trained_with": {
            "backend": keras.backend.backend(),
            "device": accelerator(),
            "dtype_policy": job.policy,
            "cpu_math": cpu_math_in_effect(),  # what `imagegen distill` asked for (train.cpu_math), if the CPU has it
        },
        "stopped_early": stopped_early,
    }


def is_finished(model_dir: Path, distillation: dict[str, Any]) -> bool:
    """A folder holding a complete student of exactly this round (kept by --resume)."""
    path = model_dir / MODEL_FILE
    if not path.is_file():
        return False
    meta = json.loads(path.read_text())
    return meta.get("distillation") == distillation and not meta.get("stopped_early", False)


def clear_outputs(out_root: Path, method: str) -> None:
    """Remove what an earlier run of this method wrote (only the names a distillation writes)."""
    if not out_root.is_dir():
        return
    for child in out_root.iterdir():
        if method == "progressive":
            ours = child.is_dir() and (child.name.startswith("round_") or child.name == "final")
        else:
            ours = child.name == MODEL_FILE or child.name.endswith(".weights.h5")
        if ours:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _teacher_tags(path: Path, meta: dict[str, Any], **tags: Any) -> dict[str, Any]:
    tags["teacher.path"] = str(Path(path).resolve())
    if meta.get(DIGEST_KEY):  # the teacher's training run carries the same tag
        tags[f"teacher.{DIGEST_KEY}"] = meta[DIGEST_KEY]
    return tags


# --------------------------------------------------------------------------------------------------
# The methods


def _progressive(job: DistillJob, report: dict[str, Any], rows: list[np.ndarray]) -> Path:
    """Rounds halving the steps; each round's student is the next round's teacher."""
    p = job.params
    cfg = p.distill
    spec = job.teacher.family.spec
    clip_x0 = p.sample.clip_x0
    rounds = plan_rounds(int(spec[spec["family"]]["timesteps"]), cfg.start_steps, cfg.target_steps)
    base = SamplerSettings(sampler="ddim", eta=0.0, guidance_scale=p.sample.guidance_scale, clip_x0=clip_x0)
    first_grid = base.with_(timesteps=rounds[0].teacher_grid.tolist())
    start = job.side_by_side.measure(job.teacher.family, first_grid)
    report["teacher_start"] = start.figures
    rows.append(start.images)

    teacher_net = job.teacher.family.networks["unet_ema"]
    teacher_path, teacher_meta = job.teacher_dir, job.teacher.meta
    # The round just trained in this process: the next one reuses its networks and compiled train step.
    previous: Distillation | None = None
    stepper: Stepper | None = None
    last: Path | None = None
    stopped = False
    report["rounds"] = {}
    for rnd in rounds:
        record = sampling_record(rnd.student_grid)
        distillation = {
            "method": "progressive",
            "round": rnd.index,
            "steps": rnd.steps,
            "teacher_steps": len(rnd.teacher_grid),
            "teacher_timesteps": [int(t) for t in rnd.teacher_grid],
            "original_teacher": str(job.teacher_dir),
            "weighting": cfg.weighting,
            "clip_x0": clip_x0,
        }
        model_dir = job.out_root / f"round_{rnd.index}_steps_{rnd.steps}"
        tags = _teacher_tags(teacher_path, teacher_meta, **{"distill.round": rnd.index, "distill.steps": rnd.steps})
        name = f"distill-ddpm-progressive-round{rnd.index}-{rnd.steps}steps"
        with job.open_run(name, tags) as child:
            if job.resume and is_finished(model_dir, distillation):
                loaded = load_model(model_dir)
                student, meta = loaded.family, loaded.meta
                job.notes.append(f"round {rnd.index}: kept the finished student in {model_dir} (--resume)")
                stopped = False
                previous, stepper = None, None
            else:
                label = f"distill r{rnd.index} ({rnd.steps} steps)"
                if previous is not None:
                    dist = next_round(previous, rnd.teacher_grid, cfg, clip_x0, label)
                else:
                    with dtype_policy(job.policy):
                        dist = build_progressive(teacher_net, spec, rnd.teacher_grid, cfg, clip_x0, name=label)
                ckpt = job.checkpoints / f"round_{rnd.index}"
                trained = fit_student(job, dist, cfg.steps_per_round, p.seed + rnd.index, ckpt, child, stepper)
                previous, stepper = dist, trained.stepper
                stopped = trained.stopped_early
                student = dist.student
                meta = {
                    **student_meta(job, teacher_meta, Path(teacher_path), trained, distillation),
                    "sampling": record,
                }
                save_model(student, model_dir, meta)
                # as the next round reads it
                meta = json.loads((model_dir / MODEL_FILE).read_text())
                child.set_tags({DIGEST_KEY: meta[DIGEST_KEY]})  # the run a student folder finds by its digest
            sampling = base.with_(timesteps=record["timesteps"])
            measured = job.side_by_side.measure(student, sampling, reference=start.images)
            teacher_same_steps = job.side_by_side.measure(job.teacher.family, sampling, reference=start.images)
            report["rounds"][f"round_{rnd.index}"] = {
                "path": str(model_dir),
                "steps": rnd.steps,
                "final_loss": float(meta.get("final_metrics", {}).get("loss", float("nan"))),
                "student": measured.figures,
                "teacher_same_steps": teacher_same_steps.figures,
            }
            child.log_metrics(
                finite_metrics({"student": measured.figures, "teacher_same_steps": teacher_same_steps.figures})
            )
            rows.append(measured.images)
        last = model_dir
        report["student"] = {**measured.figures, "round": rnd.index, "path": str(model_dir)}
        if stopped:
            job.notes.append(
                f"round {rnd.index} stopped at train.max_minutes; later rounds were not run. "
                "Run again with --resume to continue"
            )
            break
        teacher_net = student.networks["unet_ema"]
        teacher_path, teacher_meta = model_dir, meta

    assert last is not None
    if stopped:
        return last
    final = job.out_root / "final"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(last, final)
    return final


def _architecture(
    job: DistillJob,
    report: dict[str, Any],
    rows: list[np.ndarray],
    teacher: Measurement,
    teacher_sampling: SamplerSettings,
) -> Path:
    """One narrower student trained on the teacher's outputs."""
    p = job.params
    cfg = p.distill
    family_name = job.teacher.name
    options = family_spec(family_name).student_options  # the distill.* knobs this family's student reads
    distillation = {"method": "architecture", "width_factor": cfg.width_factor, "steps": cfg.architecture_steps}
    features = _feature_network(job) if "feature_weight" in options and cfg.feature_weight > 0 else None
    distillation["feature_matching"] = features is not None
    if "discriminator_weight" in options:  # a student trained with the teacher-discriminator term is different
        distillation["discriminator_weight"] = cfg.discriminator_weight
    model_dir = job.out_root
    tags = _teacher_tags(job.teacher_dir, job.teacher.meta, **{"distill.width_factor": cfg.width_factor})
    with job.open_run(f"distill-{family_name}-architecture-x{cfg.width_factor:g}", tags) as child:
        if job.resume and is_finished(model_dir, distillation):
            student = load_model(model_dir).family
            job.notes.append(f"kept the finished student in {model_dir} (--resume)")
        else:
            with dtype_policy(job.policy):
                dist = build_architecture(
                    job.teacher.family, cfg, features=features, name=f"distill {family_name} x{cfg.width_factor:g}"
                )
            trained = fit_student(job, dist, cfg.architecture_steps, p.seed + 1, job.checkpoints, child)
            student = dist.student
            meta = student_meta(job, job.teacher.meta, job.teacher_dir, trained, distillation)
            if job.teacher.meta.get("sampling"):
                meta["sampling"] = job.teacher.meta["sampling"]
            save_model(student, model_dir, meta)
            child.set_tags({DIGEST_KEY: json.loads((model_dir / MODEL_FILE).read_text())[DIGEST_KEY]})
            if trained.stopped_early:
                job.notes.append("training stopped at train.max_minutes; run again with --resume to continue")
        measured = job.side_by_side.measure(student, teacher_sampling, reference=teacher.images)
        report["student"] = {**measured.figures, "path": str(model_dir)}
        report["parameter_ratio"] = measured.figures["parameters"] / teacher.figures["parameters"]
        report["macs_ratio"] = measured.figures["macs_per_image"] / teacher.figures["macs_per_image"]
        child.log_metrics(finite_metrics({"student": measured.figures}))
        rows.append(measured.images)
    return model_dir


def _feature_network(job: DistillJob) -> keras.Model | None:
    """The evaluation classifier's feature layer, for a student's feature-matching term (``feature_weight``)."""
    extractor = job.side_by_side.extractor
    if extractor is None or tuple(extractor.meta["image_shape"]) != tuple(job.dataset.image_shape):
        job.notes.append(
            f"{job.teacher.name}: feature matching skipped (no usable evaluation feature model); pixel MSE only"
        )
        return None
    from imagegen.evaluation.features import FEATURE_LAYER

    clf = extractor.classifier
    return keras.Model(clf.inputs, clf.get_layer(FEATURE_LAYER).output, name="eval_features")
