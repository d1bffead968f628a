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
* MLflow: a parent run ``distill-<family>-<method>`` tagged ``teacher.path`` (and ``teacher.run_id`` when the
  teacher's model.json has one) with one nested child run per round (progressive) or for the training
  (architecture); each student's model.json records its child run's id.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from imagegen.artifact import MODEL_FILE, LoadedModel, load_model, save_model
from imagegen.config import Params
from imagegen.data.loader import BatchStream, to_uint8
from imagegen.data.processed import ProcessedDataset
from imagegen.distill import METHODS, agreement, cost
from imagegen.distill.architecture import build_architecture
from imagegen.distill.progressive import build_progressive, plan_rounds, sampling_record
from imagegen.errors import ConfigError, DataError
from imagegen.evaluation import metrics as M
from imagegen.fileio import write_json
from imagegen.images import save_png
from imagegen.sampling import sampler_kwargs
from imagegen.tracking import finite_metrics, start_run
from imagegen.training.loop import Trainer, TrainResult
from imagegen.training.precision import accelerator, dtype_policy, resolve_policy

GRID_COLUMNS = 16
QUALITY_KEYS = ("fid", "kid_mean", "kid_std", "precision", "recall", "coverage")


# --------------------------------------------------------------------------------------------------
# Inputs


def read_teacher_meta(teacher_dir: Path) -> dict[str, Any]:
    """The teacher's model.json, or a DataError naming the folder."""
    path = Path(teacher_dir) / MODEL_FILE
    if not path.is_file():
        raise DataError(
            f"--teacher {teacher_dir}: no {MODEL_FILE} there; the teacher must be a trained model folder "
            "(the output of `imagegen train <family>`, e.g. models/ddpm)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def check_method(method: str, family: str, teacher_dir: Path) -> None:
    if method not in METHODS:
        raise ConfigError(f"distill: method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "progressive" and family != "ddpm":
        raise ConfigError(
            f"--method progressive needs a diffusion (ddpm) teacher, but {teacher_dir} holds a {family!r} model; "
            "use --method architecture for dcgan and vae"
        )


def check_dataset(meta: dict[str, Any], dataset: ProcessedDataset, teacher_dir: Path) -> None:
    shape = tuple(meta["spec"]["image_shape"])
    if shape != tuple(dataset.image_shape):
        raise DataError(
            f"{teacher_dir}: the teacher makes {shape} images but the dataset {dataset.path} holds "
            f"{tuple(dataset.image_shape)}; pass --data with the dataset it was trained on"
        )
    trained_on = (meta.get("dataset") or {}).get("content_hash")
    if trained_on and trained_on != dataset.content_hash:
        raise DataError(
            f"{teacher_dir}: the teacher was trained on dataset {trained_on}, not {dataset.content_hash} "
            f"({dataset.path}); pass --data with the dataset it was trained on"
        )


# --------------------------------------------------------------------------------------------------
# Judging a model: cost, quality on the evaluation features, images for agreement


@dataclass
class Assessment:
    """One model's figures and the images it drew from the shared noise (``images[:compare_n]`` are paired)."""

    figures: dict[str, Any]
    images: np.ndarray = field(repr=False)


class Judge:
    """Samples each model on the same noise and measures it the same way."""

    def __init__(self, params: Params, dataset: ProcessedDataset, show_progress: bool) -> None:
        self.params = params
        self.dataset = dataset
        self.notes: list[str] = []
        self.extractor: Any = None
        self.real: tuple[np.ndarray, np.ndarray] | None = None
        self.floor: dict[str, float] | None = None
        self._predictors: dict[int, tuple[Any, Any]] = {}  # id(network) -> (network, compiled predictor)
        features_dir = params.evaluate.features_dir
        if not (Path(features_dir) / "model.json").is_file():
            self.notes.append(
                f"no evaluation feature model at {features_dir}: FID/KID/precision/recall need "
                "`imagegen train-features` first; cost and agreement figures are reported without them"
            )
            return
        from imagegen.evaluation.features import load_extractor

        extractor = load_extractor(features_dir)
        if extractor.meta["dataset"]["content_hash"] != dataset.content_hash:
            self.notes.append(
                f"the feature model at {features_dir} was trained on another dataset "
                f"({extractor.meta['dataset']['content_hash']}); re-run `imagegen train-features` for quality metrics"
            )
            return
        self.extractor = extractor

    @property
    def quality(self) -> bool:
        return self.extractor is not None

    def _real(self) -> tuple[np.ndarray, np.ndarray]:
        if self.real is None:
            from imagegen.stages.evaluate import quality_metrics, real_features

            cfg = self.params.evaluate
            feats, probs, _ = real_features(self.extractor, self.dataset, cfg.max_real, self.params.seed, cfg.batch_size)
            self.real = (feats, probs)
            a, b = M.split_halves(len(feats), self.params.seed)
            floor = quality_metrics(feats[a], probs[a], feats[b], probs[b], self.params)
            self.floor = {k: floor[k] for k in QUALITY_KEYS}
        return self.real

    def _predictor(self, family: Any) -> Any:
        """One compiled predictor per DDPM network, however many grids it is sampled on (compiling is slow)."""
        if family.spec["family"] != "ddpm":
            return None
        net = family.networks["unet_ema"]
        if id(net) not in self._predictors:
            from imagegen.training.predict import compiled_predictor

            self._predictors[id(net)] = (net, compiled_predictor(net))  # the network kept alive: ids stay unique
        return self._predictors[id(net)][1]

    def assess(self, family: Any, sampling: dict[str, Any], reference: np.ndarray | None = None) -> Assessment:
        """Figures for ``family`` sampled with ``sampling``; agreement with ``reference`` images when given."""
        p = self.params
        sample = cost.make_sampler(family, sampling, predict=self._predictor(family))
        n = max(p.evaluate.n_samples, p.distill.compare_n) if self.quality else p.distill.compare_n
        images = to_uint8(cost.sample_batches(sample, n, p.seed, p.evaluate.batch_size))
        figures: dict[str, Any] = {
            "steps": _steps(family, sampling),
            "parameters": cost.parameters(family),
            "macs_per_image": cost.macs_per_image(family, sampling),
            "images_per_sec": cost.images_per_second(sample, p.distill.speed_n),
        }
        if self.quality:
            from imagegen.stages.evaluate import quality_metrics

            real_f, real_p = self._real()
            fake_f, fake_p = self.extractor.embed(images[: p.evaluate.n_samples], p.evaluate.batch_size)
            q = quality_metrics(real_f, real_p, fake_f, fake_p, p)
            figures.update({k: q[k] for k in QUALITY_KEYS})
        if reference is not None:
            k = p.distill.compare_n
            sim = agreement.agreement(reference[:k], images[:k])
            figures.update(ssim_to_teacher=sim["ssim"], psnr_to_teacher=sim["psnr"])
        return Assessment(figures, images)


def _steps(family: Any, sampling: dict[str, Any]) -> int:
    if family.spec["family"] != "ddpm":
        return 1
    if sampling.get("sampler") == "ddpm":
        return int(family.spec["ddpm"]["timesteps"])
    if sampling.get("timesteps") is not None:
        return len(sampling["timesteps"])
    return int(sampling["steps"])


# --------------------------------------------------------------------------------------------------
# Training one student


def _fit(
    params: Params,
    distillation: Any,
    dataset: ProcessedDataset,
    steps: int,
    seed: int,
    ckpt_dir: Path,
    resume: bool,
    run: Any,
    show_progress: bool,
) -> tuple[TrainResult, bool, str | None]:
    """Train the student with the shared Trainer; returns the result, whether it stopped early, the resume point."""
    batch_size = params.distill.batch_size or params.train.batch_size
    stream = BatchStream(dataset.split("train"), batch_size, seed)
    trainer = Trainer(
        distillation.family,
        stream,
        params.train,
        seed=seed,
        checkpoint_dir=ckpt_dir,
        on_metrics=lambda step, m: run.log_metrics(m, step=step),
        show_progress=show_progress,
    )
    resumed = trainer.resume() if resume else None
    if not resume:
        trainer.clear_checkpoints()
    result = trainer.fit(steps)
    return result, trainer.stopped_early, str(resumed) if resumed else None


def _student_meta(
    teacher_meta: dict[str, Any], teacher_path: Path, result: TrainResult, stopped_early: bool, run_id: Any,
    distillation: dict[str, Any], policy: str, resumed: str | None,
) -> dict[str, Any]:
    return {
        "dataset": teacher_meta.get("dataset"),
        "distilled_from": {
            "path": str(teacher_path),
            "family": teacher_meta.get("family"),
            "dataset": teacher_meta.get("dataset"),
            "mlflow_run_id": teacher_meta.get("mlflow_run_id"),
        },
        "distillation": distillation,
        "step": result.step,
        "final_metrics": result.metrics,
        "trained_with": {"backend": keras.backend.backend(), "device": accelerator(), "dtype_policy": policy},
        "resumed_from": resumed,
        "stopped_early": stopped_early,
        "mlflow_run_id": run_id,
    }


def _finished(model_dir: Path, distillation: dict[str, Any]) -> bool:
    """A folder holding a complete student of exactly this round (for --resume)."""
    path = model_dir / MODEL_FILE
    if not path.is_file():
        return False
    meta = json.loads(path.read_text())
    return meta.get("distillation") == distillation and not meta.get("stopped_early", False)


def _clear_outputs(out_root: Path, method: str) -> None:
    """Remove what an earlier run of this method wrote (only the names this stage writes)."""
    if not out_root.is_dir():
        return
    for child in out_root.iterdir():
        ours = (
            (child.is_dir() and (child.name.startswith("round_") or child.name == "final"))
            if method == "progressive"
            else (child.name == MODEL_FILE or child.name.endswith(".weights.h5"))
        )
        if ours:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


# --------------------------------------------------------------------------------------------------
# The stage


def run_distill(
    params: Params,
    teacher_dir: Path | str,
    method: str,
    out_dir: Path | None = None,
    data_dir: Path | None = None,
    show_progress: bool = True,
    resume: bool = False,
) -> Path:
    """Distil the teacher in ``teacher_dir`` with ``method``; returns the final student's model folder.

    With ``resume`` finished rounds are kept and an interrupted one continues from its latest checkpoint.
    """
    teacher_dir = Path(teacher_dir)
    if method not in METHODS:
        raise ConfigError(f"distill: method {method!r}: expected one of {', '.join(METHODS)}")
    teacher_meta = read_teacher_meta(teacher_dir)
    family_name = teacher_meta.get("family")
    check_method(method, family_name, teacher_dir)
    if method == "progressive":  # impossible step counts stop here, before any work
        plan_rounds(int(teacher_meta["spec"]["ddpm"]["timesteps"]), params.distill.start_steps, params.distill.target_steps)
    dataset = ProcessedDataset.open(Path(data_dir) if data_dir is not None else params.data.output_dir)
    check_dataset(teacher_meta, dataset, teacher_dir)

    tag = f"{family_name}_student_{method}"
    out_root = Path(out_dir) if out_dir is not None else params.train.models_dir / tag
    if out_root.resolve() == teacher_dir.resolve():
        raise ConfigError(f"--out {out_root}: the student cannot be written into the teacher's folder")
    teacher = load_model(teacher_dir)
    report_dir = params.train.reports_dir / f"distill_{family_name}_{method}"
    ckpt_root = params.train.checkpoints_dir / tag
    if not resume:
        _clear_outputs(out_root, method)

    from imagegen.stages.train import seed_everything

    seed_everything(params.seed)
    policy = resolve_policy(params.train.mixed_precision)
    judge = Judge(params, dataset, show_progress)
    teacher_sampling = sampler_kwargs(params, teacher_meta)
    run_params = {"method": method, "teacher": str(teacher_dir), "family": family_name, "seed": params.seed}
    for section in ("distill", "sample"):
        run_params.update({f"{section}.{k}": v for k, v in getattr(params, section).model_dump(mode="json").items()})
    parent_tags = {
        "teacher.path": str(teacher_dir.resolve()),
        "teacher.family": family_name,
        "distill.method": method,
        "keras.backend": keras.backend.backend(),
        "device": accelerator(),
    }
    if teacher_meta.get("mlflow_run_id"):
        parent_tags["teacher.run_id"] = teacher_meta["mlflow_run_id"]

    with start_run(
        params.tracking,
        run_name=f"distill-{family_name}-{method}",
        stage="distill",
        dataset_hash=dataset.content_hash,
        params=run_params,
        tags=parent_tags,
    ) as parent:
        context = _Context(params, dataset, teacher, teacher_meta, teacher_dir, out_root, ckpt_root, judge,
                           policy, parent, resume, show_progress)
        teacher_view = judge.assess(teacher.family, teacher_sampling)
        report: dict[str, Any] = {
            "method": method,
            "family": family_name,
            "teacher_path": str(teacher_dir),
            "teacher": teacher_view.figures,
        }
        rows = [teacher_view.images]
        if method == "progressive":
            final = _progressive(context, report, rows)
        else:
            final = _architecture(context, report, rows, teacher_view, teacher_sampling)
        if judge.floor is not None:
            report["real_floor"] = judge.floor
        report["notes"] = judge.notes + context.notes
        report["student_path"] = str(final)
        report_dir.mkdir(parents=True, exist_ok=True)
        write_json(report_dir / "metrics.json", report)
        save_png(report_dir / "grid.png", agreement.rows_grid(rows, GRID_COLUMNS))
        parent.log_metrics(finite_metrics(report))
        parent.log_artifact(report_dir / "metrics.json", "distill")
        parent.log_artifact(report_dir / "grid.png", "distill")
        parent.set_tags({"student.path": str(Path(final).resolve())})
    return final


@dataclass
class _Context:
    params: Params
    dataset: ProcessedDataset
    teacher: LoadedModel
    teacher_meta: dict[str, Any]
    teacher_dir: Path
    out_root: Path
    ckpt_root: Path
    judge: Judge
    policy: str
    parent: Any
    resume: bool
    show_progress: bool
    notes: list[str] = field(default_factory=list)

    def child_run(self, name: str, tags: dict[str, Any]) -> Any:
        return start_run(
            self.params.tracking,
            run_name=name,
            stage="distill",
            dataset_hash=self.dataset.content_hash,
            tags=tags,
            parent_run_id=self.parent.run_id,
        )


def _progressive(ctx: _Context, report: dict[str, Any], rows: list[np.ndarray]) -> Path:
    p = ctx.params
    cfg = p.distill
    spec = ctx.teacher.family.spec
    clip_x0 = p.sample.clip_x0
    rounds = plan_rounds(int(spec["ddpm"]["timesteps"]), cfg.start_steps, cfg.target_steps)
    base = {"sampler": "ddim", "eta": 0.0, "guidance_scale": p.sample.guidance_scale, "clip_x0": clip_x0}
    start = ctx.judge.assess(ctx.teacher.family, {**base, "timesteps": rounds[0].teacher_grid.tolist()})
    report["teacher_start"] = start.figures
    rows.append(start.images)

    teacher_net = ctx.teacher.family.networks["unet_ema"]
    teacher_path, teacher_meta, teacher_run = ctx.teacher_dir, ctx.teacher_meta, ctx.teacher_meta.get("mlflow_run_id")
    last: Path | None = None
    report["rounds"] = {}
    for rnd in rounds:
        record = sampling_record(rnd.student_grid)
        distillation = {
            "method": "progressive",
            "round": rnd.index,
            "steps": rnd.steps,
            "teacher_steps": len(rnd.teacher_grid),
            "teacher_timesteps": [int(t) for t in rnd.teacher_grid],
            "original_teacher": str(ctx.teacher_dir),
            "weighting": cfg.weighting,
            "clip_x0": clip_x0,
        }
        model_dir = ctx.out_root / f"round_{rnd.index}_steps_{rnd.steps}"
        tags = {"distill.round": rnd.index, "distill.steps": rnd.steps, "teacher.path": str(Path(teacher_path).resolve())}
        if teacher_run:
            tags["teacher.run_id"] = teacher_run
        with ctx.child_run(f"distill-ddpm-progressive-round{rnd.index}-{rnd.steps}steps", tags) as child:
            if ctx.resume and _finished(model_dir, distillation):
                loaded = load_model(model_dir)
                student, student_meta = loaded.family, loaded.meta
                ctx.notes.append(f"round {rnd.index}: kept the finished student in {model_dir} (--resume)")
                stopped = False
            else:
                with dtype_policy(ctx.policy):
                    dist = build_progressive(teacher_net, spec, rnd.teacher_grid, cfg, clip_x0,
                                             name=f"distill r{rnd.index} ({rnd.steps} steps)")
                result, stopped, resumed = _fit(
                    p, dist, ctx.dataset, cfg.steps_per_round, p.seed + rnd.index,
                    ctx.ckpt_root / f"round_{rnd.index}", ctx.resume, child, ctx.show_progress,
                )
                student = dist.student
                student_meta = {
                    **_student_meta(teacher_meta, Path(teacher_path), result, stopped, child.run_id, distillation,
                                    ctx.policy, resumed),
                    "sampling": record,
                }
                save_model(student, model_dir, student_meta)
                student_meta = json.loads((model_dir / MODEL_FILE).read_text())  # as the next round's teacher sees it
            sampling = {**base, "timesteps": record["timesteps"]}
            view = ctx.judge.assess(student, sampling, reference=start.images)
            naive = ctx.judge.assess(ctx.teacher.family, sampling, reference=start.images)
            entry = {
                "path": str(model_dir),
                "steps": rnd.steps,
                "final_loss": float(student_meta.get("final_metrics", {}).get("loss", float("nan"))),
                "student": view.figures,
                "teacher_same_steps": naive.figures,
            }
            report["rounds"][f"round_{rnd.index}"] = entry
            child.log_metrics(finite_metrics({"student": view.figures, "teacher_same_steps": naive.figures}))
            rows.append(view.images)
        last = model_dir
        report["student"] = {**view.figures, "round": rnd.index, "path": str(model_dir)}
        if stopped:
            ctx.notes.append(
                f"round {rnd.index} stopped at train.max_minutes; later rounds were not run. "
                "Run again with --resume to continue"
            )
            break
        teacher_net = student.networks["unet_ema"]
        teacher_path, teacher_meta, teacher_run = model_dir, student_meta, student_meta.get("mlflow_run_id")

    assert last is not None
    if stopped:
        return last
    final = ctx.out_root / "final"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(last, final)
    return final


def _architecture(
    ctx: _Context, report: dict[str, Any], rows: list[np.ndarray], teacher_view: Assessment,
    teacher_sampling: dict[str, Any],
) -> Path:
    p = ctx.params
    cfg = p.distill
    family_name = ctx.teacher.name
    distillation = {"method": "architecture", "width_factor": cfg.width_factor, "steps": cfg.architecture_steps}
    features = None
    if family_name == "dcgan" and cfg.feature_weight > 0:
        if ctx.judge.quality and tuple(ctx.judge.extractor.meta["image_shape"]) == tuple(ctx.dataset.image_shape):
            from imagegen.evaluation.features import FEATURE_LAYER

            clf = ctx.judge.extractor.classifier
            features = keras.Model(clf.inputs, clf.get_layer(FEATURE_LAYER).output, name="eval_features")
        else:
            ctx.notes.append("dcgan: feature matching skipped (no usable evaluation feature model); pixel MSE only")
    distillation["feature_matching"] = features is not None
    model_dir = ctx.out_root
    tags = {"teacher.path": str(ctx.teacher_dir.resolve()), "distill.width_factor": cfg.width_factor}
    if ctx.teacher_meta.get("mlflow_run_id"):
        tags["teacher.run_id"] = ctx.teacher_meta["mlflow_run_id"]
    with ctx.child_run(f"distill-{family_name}-architecture-x{cfg.width_factor:g}", tags) as child:
        if ctx.resume and _finished(model_dir, distillation):
            student = load_model(model_dir).family
            ctx.notes.append(f"kept the finished student in {model_dir} (--resume)")
            stopped = False
        else:
            with dtype_policy(ctx.policy):
                dist = build_architecture(ctx.teacher.family, cfg, features=features,
                                          name=f"distill {family_name} x{cfg.width_factor:g}")
            result, stopped, resumed = _fit(
                p, dist, ctx.dataset, cfg.architecture_steps, p.seed + 1, ctx.ckpt_root, ctx.resume, child,
                ctx.show_progress,
            )
            student = dist.student
            meta = _student_meta(ctx.teacher_meta, ctx.teacher_dir, result, stopped, child.run_id, distillation,
                                 ctx.policy, resumed)
            if ctx.teacher_meta.get("sampling"):
                meta["sampling"] = ctx.teacher_meta["sampling"]
            save_model(student, model_dir, meta)
            if stopped:
                ctx.notes.append("training stopped at train.max_minutes; run again with --resume to continue")
        view = ctx.judge.assess(student, teacher_sampling, reference=teacher_view.images)
        report["student"] = {**view.figures, "path": str(model_dir)}
        report["parameter_ratio"] = view.figures["parameters"] / report["teacher"]["parameters"]
        report["macs_ratio"] = view.figures["macs_per_image"] / report["teacher"]["macs_per_image"]
        child.log_metrics(finite_metrics({"student": view.figures}))
        rows.append(view.images)
    return model_dir
