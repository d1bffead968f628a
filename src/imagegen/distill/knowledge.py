"""Knowledge distillation of a classifier ("dark knowledge", Hinton, Vinyals & Dean 2015).

The pipeline's feature classifier (``imagegen train-features``) is the teacher. A student of the same
architecture with ``distill.kd_width_factor`` of its width (conv filters and ``feature_dim``) is trained on

    kd_alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - kd_alpha) * CE(label, student)

where ``teacher``/``student`` are logits. Softened by T > 1, the teacher's small probabilities for the wrong
classes (which 7s look like 1s) carry information hard labels do not; T^2 keeps the soft term's gradients at
the hard term's scale as T changes. :func:`~imagegen.models.matching.kd_loss` is the one KL implementation
(keras.ops, any backend); the DCGAN architecture student reuses it on its teacher discriminator's outputs.

The teacher's logits are computed once (inference mode: BatchNorm moving statistics, no dropout), so training
costs no teacher forward passes. A baseline, the same student trained from the same initial weights on the hard
labels only (``kd_alpha = 0``), makes the gain from the teacher visible. The student is saved as an ordinary
feature-extractor folder (:func:`imagegen.evaluation.features.load_extractor` reads it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from imagegen.config import DistillConfig
from imagegen.data.loader import to_unit_range
from imagegen.data.processed import Split
from imagegen.distill.cost import count_macs, images_per_second
from imagegen.distill.setup import student_width
from imagegen.errors import DataError
from imagegen.evaluation.features import MODEL_FILE, WEIGHTS_FILE, build_classifier, save_extractor
from imagegen.models.matching import kd_loss

METHOD = "knowledge"
TEACHER_KEYS = ("image_shape", "num_classes", "width", "feature_dim")


class KnowledgeStudent(keras.Model):
    """Fits ``student`` (a logits model) with Keras' own ``fit`` on ``x = images``,
    ``y = {"label": int, "teacher_logits": float}``: the loss above (``alpha = 0``: hard labels only)."""

    def __init__(self, student: keras.Model, temperature: float, alpha: float) -> None:
        super().__init__(name="knowledge_student")
        self.student = student
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def call(self, x: Any, training: bool = False) -> Any:
        return self.student(x, training=training)

    def compute_loss(
        self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None, training: bool = True
    ) -> Any:
        hard = ops.mean(keras.losses.sparse_categorical_crossentropy(y["label"], y_pred, from_logits=True))
        if self.alpha == 0.0:
            return hard
        soft = kd_loss(y["teacher_logits"], y_pred, self.temperature)
        return self.alpha * soft + (1.0 - self.alpha) * hard


@dataclass
class Teacher:
    """A feature classifier folder: its model.json and the classifier as a logits model."""

    path: Path
    meta: dict[str, Any]
    logits: keras.Model


def load_teacher(path: Path | str) -> Teacher:
    """The feature classifier in ``path`` (``imagegen train-features``), or a DataError naming the folder."""
    path = Path(path)
    expected = "the output of `imagegen train-features`, e.g. models/features"
    meta_path = path / MODEL_FILE
    if not meta_path.is_file() or not (path / WEIGHTS_FILE).is_file():
        raise DataError(
            f"--teacher {path}: not a feature classifier folder (no {MODEL_FILE} and {WEIGHTS_FILE}); "
            f"--method knowledge needs {expected}"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc})") from None
    missing = [k for k in TEACHER_KEYS if k not in meta]
    if missing or "family" in meta:
        what = f"a {meta['family']!r} model" if "family" in meta else f"no {', '.join(missing)}"
        raise DataError(f"--teacher {path}: not a feature classifier ({MODEL_FILE} has {what}); expected {expected}")
    logits = classifier_for(meta, logits=True)
    logits.load_weights(path / WEIGHTS_FILE)
    return Teacher(path, meta, logits)


def classifier_for(meta: dict[str, Any], logits: bool = False) -> keras.Model:
    """The classifier a feature-extractor ``model.json`` describes (fresh weights)."""
    shape = tuple(int(v) for v in meta["image_shape"])
    return build_classifier(shape, int(meta["num_classes"]), int(meta["width"]), int(meta["feature_dim"]), logits)


def student_meta(teacher_meta: dict[str, Any], width_factor: float) -> dict[str, Any]:
    """The teacher's ``model.json`` fields with ``width`` and ``feature_dim`` scaled by ``width_factor``."""
    return {
        **{k: teacher_meta[k] for k in ("image_shape", "num_classes", "class_names", "dataset") if k in teacher_meta},
        "width": student_width(int(teacher_meta["width"]), width_factor),
        "feature_dim": student_width(int(teacher_meta["feature_dim"]), width_factor),
    }


def predict_logits(model: keras.Model, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits of uint8 images, inference mode."""
    out = [
        np.asarray(model.predict_on_batch(to_unit_range(np.asarray(images[i : i + batch_size]))))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float32)


def fit_student(
    meta: dict[str, Any],
    images: np.ndarray,
    labels: np.ndarray,
    teacher_logits: np.ndarray,
    *,
    temperature: float,
    alpha: float,
    epochs: int,
    learning_rate: float,
    seed: int,
    batch_size: int = 128,
    verbose: int = 0,
) -> tuple[keras.Model, list[float]]:
    """Train a student described by ``meta`` from seeded initial weights; returns its logits model and the
    loss per epoch. The same ``seed`` gives the same initial weights and batches whatever ``alpha`` is."""
    keras.utils.set_random_seed(seed)
    student = classifier_for(meta, logits=True)
    trainer = KnowledgeStudent(student, temperature, alpha)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate))
    history = trainer.fit(
        to_unit_range(np.asarray(images)),
        {"label": np.asarray(labels, np.int32), "teacher_logits": np.asarray(teacher_logits, np.float32)},
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=verbose,
    )
    return student, [float(v) for v in history.history["loss"]]


def measure(model: keras.Model, images: np.ndarray, labels: np.ndarray, speed_n: int) -> dict[str, Any]:
    """Held-out accuracy, parameters, MACs and images/s (batch ``speed_n``, best of 3) of a logits model."""
    logits = predict_logits(model, images)
    batch = to_unit_range(np.resize(np.asarray(images), (speed_n, *images.shape[1:])))
    return {
        "test_accuracy": float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels))),
        "parameters": int(model.count_params()),
        "macs_per_image": count_macs(model, batch[:1]),
        "images_per_second": images_per_second(lambda n, rng: model.predict_on_batch(batch[:n]), speed_n),
    }


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of images on which two logits arrays predict the same class."""
    return float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))


def report_markdown(report: dict[str, Any]) -> str:
    """A short table of teacher, KD student and hard-label baseline."""
    s = report["settings"]
    lines = [
        "# Knowledge distillation of the feature classifier",
        "",
        f"Teacher `{report['teacher_path']}` -> student `{report['student_path']}`; T = {s['temperature']:g}, "
        f"kd_alpha = {s['kd_alpha']:g}, width factor {s['kd_width_factor']:g}, {s['kd_epochs']} epochs; "
        f"held-out split: {report['test_images']} images; load average {report['load_average'][0]:.2f}.",
        "",
        "| model | width | test accuracy | agreement with teacher | parameters | MACs/image | images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, name in (("teacher", "teacher"), ("student", "KD student"), ("baseline", "hard labels only")):
        m = report[key]
        lines.append(
            f"| {name} | {m['width']} | {m['test_accuracy']:.4f} | {m.get('agreement_with_teacher', 1.0):.4f} | "
            f"{m['parameters']:,} | {m['macs_per_image']:,} | {m['images_per_second']:,.0f} |"
        )
    lines += ["", f"KD gain over the hard-label student: {report['kd_gain']:+.4f} accuracy.", ""]
    return "\n".join(lines)


def distill_classifier(
    teacher: Teacher,
    train: Split,
    test: Split,
    cfg: DistillConfig,
    *,
    learning_rate: float,
    seed: int,
    out_dir: Path,
    verbose: int = 0,
) -> dict[str, Any]:
    """Train the KD student and the hard-label baseline, save the student to ``out_dir`` as a feature
    extractor, and return the report (teacher, student, baseline side by side on the ``test`` split)."""
    teacher_train = predict_logits(teacher.logits, train.images)
    teacher_test = predict_logits(teacher.logits, test.images)
    meta = student_meta(teacher.meta, cfg.kd_width_factor)
    common: dict[str, Any] = {
        "temperature": cfg.temperature,
        "epochs": cfg.kd_epochs,
        "learning_rate": learning_rate,
        "seed": seed,
        "verbose": verbose,
    }
    models: dict[str, tuple[keras.Model, list[float]]] = {
        "student": fit_student(meta, train.images, train.labels, teacher_train, alpha=cfg.kd_alpha, **common),
        "baseline": fit_student(meta, train.images, train.labels, teacher_train, alpha=0.0, **common),
    }
    report: dict[str, Any] = {
        "method": METHOD,
        "teacher_path": str(teacher.path),
        "student_path": str(out_dir),
        "settings": {
            "temperature": cfg.temperature,
            "kd_alpha": cfg.kd_alpha,
            "kd_width_factor": cfg.kd_width_factor,
            "kd_epochs": cfg.kd_epochs,
            "learning_rate": learning_rate,
            "seed": seed,
        },
        "test_images": len(test.labels),
        "teacher": {
            **measure(teacher.logits, test.images, test.labels, cfg.speed_n),
            "width": int(teacher.meta["width"]),
            "feature_dim": int(teacher.meta["feature_dim"]),
        },
    }
    for key, (model, losses) in models.items():
        report[key] = {
            **measure(model, test.images, test.labels, cfg.speed_n),
            "agreement_with_teacher": agreement(predict_logits(model, test.images), teacher_test),
            "width": meta["width"],
            "feature_dim": meta["feature_dim"],
            "final_loss": losses[-1],
        }
    report["kd_gain"] = report["student"]["test_accuracy"] - report["baseline"]["test_accuracy"]
    report["parameter_ratio"] = report["student"]["parameters"] / report["teacher"]["parameters"]
    report["speedup"] = report["student"]["images_per_second"] / report["teacher"]["images_per_second"]
    report["load_average"] = list(os.getloadavg())
    report["backend"] = keras.backend.backend()

    classifier = classifier_for(meta)  # with its softmax, as evaluation loads it
    classifier.set_weights(models["student"][0].get_weights())
    scores = {"test_accuracy": report["student"]["test_accuracy"], "final_loss": report["student"]["final_loss"]}
    save_extractor(
        classifier,
        out_dir,
        {
            "format_version": 1,
            **meta,
            "scores": scores,
            "backend": keras.backend.backend(),
            "distilled_from": {"path": str(teacher.path), "weights_md5": teacher.meta.get("weights_md5")},
            "distillation": {"method": METHOD, **report["settings"]},
        },
    )
    return report
