"""Stage ``distill``: a trained teacher -> student model folder(s), a report and MLflow runs linking them.

Outputs (defaults; ``--out`` moves the models):

* ``<models_dir>/<family>_student_<method>/``: for ``progressive``, one model folder per round
  (``round_<k>_steps_<N>/``) and the last round's student copied to ``final/``; for ``architecture``, the
  student model folder itself. Every folder is a normal model (``model.json`` + weights) that ``imagegen
  sample``/``evaluate``/``export`` take; a progressive student records its DDIM grid in ``sampling``.
* ``<reports_dir>/distill_<family>_<method>/metrics.json``: teacher and students side by side (steps,
  parameters, MACs per image, images/s, FID/KID/precision/recall when the evaluation feature model exists,
  SSIM/PSNR of each student to its teacher on the same noise), and ``grid.png``: one row per model (teacher
  first), one column per noise.
* MLflow: a parent run ``distill-<family>-<method>`` tagged ``teacher.path`` and ``teacher.weights_digest`` (the
  tag the teacher's training run carries too) with one nested child run per round (progressive) or for the
  training (architecture). A student's model.json records its teacher's ``weights_digest`` under
  ``distilled_from``, and ``metrics.json`` the digests of the teacher and of the final student; run ids and
  speeds stay in MLflow and ``run.json`` (not tracked), so a re-run writes the same bytes.

``--method knowledge`` distils the evaluation feature classifier (``imagegen train-features``) instead
(:mod:`imagegen.distill.knowledge`): the student goes to ``<models_dir>/features_student_knowledge/`` (a feature
extractor folder), the report (teacher, KD student, hard-label-only baseline) to
``<reports_dir>/distill_features_knowledge/{metrics.json,report.md}``, with one MLflow run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras

from imagegen.artifact import MODEL_FILE, load_model, model_digest
from imagegen.config import Params
from imagegen.data.processed import ProcessedDataset
from imagegen.distill import agreement, check_method, knowledge
from imagegen.distill.progressive import plan_rounds
from imagegen.distill.runner import DistillJob, distill
from imagegen.distill.side_by_side import SideBySide
from imagegen.errors import ConfigError, DataError
from imagegen.fileio import write_json, write_text
from imagegen.images import save_png
from imagegen.outputs import check_output
from imagegen.provenance import DIGEST_KEY
from imagegen.timings import RUN_FILE, split_measured
from imagegen.tracking import TrackingProcess, finite_metrics, start_run
from imagegen.training.precision import accelerator, resolve_policy
from imagegen.training.seeding import seed_everything

GRID_COLUMNS = 16


def read_teacher_meta(teacher_dir: Path) -> dict[str, Any]:
    """The teacher's model.json, or a DataError naming the folder."""
    path = Path(teacher_dir) / MODEL_FILE
    if not path.is_file():
        raise DataError(
            f"--teacher {teacher_dir}: no {MODEL_FILE} there; the teacher must be a trained model "
            "folder (the output of `imagegen train <family>`, e.g. models/ddpm)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def check_dataset(meta: dict[str, Any], dataset: ProcessedDataset, teacher_dir: Path) -> None:
    """The dataset must be the one the teacher was trained on (shape, and content when recorded)."""
    shape = tuple(meta.get("spec", meta)["image_shape"])  # a generator's spec, or a classifier's model.json
    if shape != tuple(dataset.image_shape):
        raise DataError(
            f"{teacher_dir}: the teacher makes {shape} images but the dataset {dataset.path} holds "
            f"{tuple(dataset.image_shape)}; pass --data with the dataset it was trained on"
        )
    trained_on = (meta.get("dataset") or {}).get("content_hash")
    if trained_on and trained_on != dataset.content_hash:
        raise DataError(
            f"{teacher_dir}: the teacher was trained on dataset {trained_on}, not "
            f"{dataset.content_hash} ({dataset.path}); pass --data with the dataset it was "
            "trained on"
        )


def run_distill(
    params: Params,
    teacher_dir: Path | str,
    method: str,
    out_dir: Path | None = None,
    data_dir: Path | None = None,
    show_progress: bool = True,
    resume: bool = False,
    tracking: TrackingProcess | None = None,
) -> Path:
    """Distil the teacher in ``teacher_dir`` with ``method``; returns the final student's folder.

    With ``resume`` finished rounds are kept and an interrupted one continues from its latest
    checkpoint (see :mod:`imagegen.distill.runner`).
    """
    teacher_dir = Path(teacher_dir)
    if method == knowledge.METHOD:
        return run_knowledge(params, teacher_dir, out_dir=out_dir, data_dir=data_dir, tracking=tracking)
    teacher_meta = read_teacher_meta(teacher_dir)
    family_name = teacher_meta.get("family")
    section = (teacher_meta.get("spec") or {}).get(family_name) if isinstance(family_name, str) else None
    check_method(method, family_name, teacher_dir, section)
    if method == "progressive":  # impossible step counts stop here, before any work
        timesteps = int(teacher_meta["spec"][family_name]["timesteps"])
        plan_rounds(timesteps, params.distill.start_steps, params.distill.target_steps)
    dataset = ProcessedDataset.open(Path(data_dir) if data_dir is not None else params.data.output_dir)
    check_dataset(teacher_meta, dataset, teacher_dir)

    tag = f"{family_name}_student_{method}"
    out_root = Path(out_dir) if out_dir is not None else params.train.models_dir / tag
    if out_root.resolve() == teacher_dir.resolve():
        raise ConfigError(f"--out {out_root}: the student cannot be written into the teacher's folder")
    # progressive: a folder of round folders; architecture: the student's model folder itself
    out_kind = "students" if method == "progressive" else "model"
    check_output(out_root, out_kind, inputs=[teacher_dir, dataset.path])
    teacher = load_model(teacher_dir)
    report_dir = params.train.reports_dir / f"distill_{family_name}_{method}"
    seed_everything(params.seed)
    side_by_side = SideBySide(
        params.evaluate, dataset, params.seed, params.distill.compare_n, params.distill.speed_n
    )  # after seeding: it may build the feature model

    run_params = {"method": method, "teacher": str(teacher_dir), "family": family_name, "seed": params.seed}
    for section in ("distill", "sample"):
        values = getattr(params, section).model_dump(mode="json")
        run_params.update({f"{section}.{k}": v for k, v in values.items()})
    parent_tags = {
        "teacher.path": str(teacher_dir.resolve()),
        "teacher.family": family_name,
        "distill.method": method,
        "keras.backend": keras.backend.backend(),
        "device": accelerator(),
    }
    if teacher_meta.get(DIGEST_KEY):  # the teacher's own training run carries the same tag
        parent_tags[f"teacher.{DIGEST_KEY}"] = teacher_meta[DIGEST_KEY]

    with start_run(
        params.tracking,
        process=tracking,
        run_name=f"distill-{family_name}-{method}",
        stage="distill",
        dataset_hash=dataset.content_hash,
        params=run_params,
        tags=parent_tags,
    ) as parent:

        def open_child_run(name: str, tags: dict[str, Any]) -> Any:
            return start_run(
                params.tracking,
                process=tracking,
                run_name=name,
                stage="distill",
                dataset_hash=dataset.content_hash,
                tags=tags,
                parent_run_id=parent.run_id,
            )

        outcome = distill(
            DistillJob(
                params=params,
                method=method,
                dataset=dataset,
                teacher=teacher,
                teacher_dir=teacher_dir,
                out_root=out_root,
                checkpoints=params.train.checkpoints_dir / tag,
                side_by_side=side_by_side,
                policy=resolve_policy(params.train.mixed_precision),
                open_run=open_child_run,
                resume=resume,
                show_progress=show_progress,
            )
        )
        report_dir.mkdir(parents=True, exist_ok=True)
        report, timing = split_measured(outcome.report)
        report["teacher"] = {**report.get("teacher", {}), DIGEST_KEY: teacher_meta[DIGEST_KEY]}
        report["student_weights_digest"] = model_digest(outcome.final)
        write_json(report_dir / "metrics.json", report)
        write_json(report_dir / RUN_FILE, timing or {})
        save_png(report_dir / "grid.png", agreement.rows_grid(outcome.rows, GRID_COLUMNS))
        parent.log_metrics(finite_metrics(outcome.report))
        parent.log_artifact(report_dir / "metrics.json", "distill")
        parent.log_artifact(report_dir / "grid.png", "distill")
        parent.set_tags({"student.path": str(Path(outcome.final).resolve())})
    return outcome.final


def run_knowledge(
    params: Params,
    teacher_dir: Path,
    out_dir: Path | None = None,
    data_dir: Path | None = None,
    tracking: TrackingProcess | None = None,
) -> Path:
    """Distil the feature classifier in ``teacher_dir`` into a narrower one; returns the student's folder."""
    teacher = knowledge.load_teacher(teacher_dir)
    dataset = ProcessedDataset.open(Path(data_dir) if data_dir is not None else params.data.output_dir)
    check_dataset(teacher.meta, dataset, teacher_dir)
    out_root = Path(out_dir) if out_dir is not None else params.train.models_dir / "features_student_knowledge"
    if out_root.resolve() == teacher_dir.resolve():
        raise ConfigError(f"--out {out_root}: the student cannot be written into the teacher's folder")
    report_dir = params.train.reports_dir / "distill_features_knowledge"
    seed_everything(params.seed)
    values = params.distill.model_dump(mode="json")
    keys = ("temperature", "kd_alpha", "kd_width_factor", "kd_epochs", "speed_n")
    run_params = {"method": knowledge.METHOD, "teacher": str(teacher_dir), "seed": params.seed}
    run_params.update({f"distill.{k}": values[k] for k in keys})
    tags = {"teacher.path": str(teacher_dir.resolve()), "distill.method": knowledge.METHOD, "device": accelerator()}
    with start_run(
        params.tracking,
        process=tracking,
        run_name="distill-features-knowledge",
        stage="distill",
        dataset_hash=dataset.content_hash,
        params=run_params,
        tags=tags,
    ) as run:
        report = knowledge.distill_classifier(
            teacher,
            dataset.split("train", mmap=False),
            dataset.split("test", mmap=False),
            params.distill,
            learning_rate=params.evaluate.feature_learning_rate,
            seed=params.seed,
            out_dir=out_root,
        )
        report_dir.mkdir(parents=True, exist_ok=True)
        write_json(report_dir / "metrics.json", report)
        write_text(report_dir / "report.md", knowledge.report_markdown(report))
        run.log_metrics(finite_metrics(report))
        run.log_artifact(report_dir / "metrics.json", "distill")
        run.log_artifact(report_dir / "report.md", "distill")
        run.set_tags({"student.path": str(out_root.resolve())})
    return out_root
