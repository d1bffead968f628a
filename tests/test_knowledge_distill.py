"""Knowledge distillation ("dark knowledge", Hinton et al. 2015), as a specification.

* The KL term is ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, batch mean: equal to its closed form
  on fixed logits, 0 when the logits agree, and on one real/fake logit the Bernoulli KL.
* ``imagegen distill --teacher <feature classifier> --method knowledge`` trains a narrower classifier that is
  within 0.05 of its teacher's held-out accuracy on digits, reports it beside a hard-label-only baseline, and
  saves it as a feature extractor that evaluation can load.
* The DCGAN architecture student's optional discriminator term is 0 when the student draws the teacher's images.
* Bad input (T <= 0, a teacher that is not a feature classifier) stops with one line and exit status 2.

Tiny everything (8x8 digits, a width-16 teacher, a width-8 student): the file runs in well under a minute.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from imagegen.cli import app
from imagegen.config import DistillConfig, Params, load_params
from imagegen.distill.architecture import build_architecture
from imagegen.distill.setup import copy_network, evaluate_loss
from imagegen.evaluation.features import load_extractor
from imagegen.models.matching import binary_logits, kd_loss
from imagegen.stages.ingest import run_ingest
from imagegen.training.families import build_family

ACCURACY_BOUND = 0.05  # the KD student's held-out accuracy is at least the teacher's minus this


def numpy_kd(teacher: np.ndarray, student: np.ndarray, t: float) -> float:
    """The closed form, in float64: T^2 * mean_b sum_k p_t (log p_t - log p_s), p = softmax(logits / T)."""

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z / t
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    log_pt, log_ps = log_softmax(teacher.astype(np.float64)), log_softmax(student.astype(np.float64))
    return float(t * t * np.mean(np.sum(np.exp(log_pt) * (log_pt - log_ps), axis=-1)))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_the_kl_term_equals_its_closed_form_on_fixed_logits(temperature: float) -> None:
    rng = np.random.default_rng(0)
    teacher = rng.normal(0, 3, (6, 10)).astype(np.float32)
    student = rng.normal(0, 3, (6, 10)).astype(np.float32)
    got = float(keras.ops.convert_to_numpy(kd_loss(teacher, student, temperature)))
    assert got == pytest.approx(numpy_kd(teacher, student, temperature), rel=1e-5)
    assert got > 0
    same = float(keras.ops.convert_to_numpy(kd_loss(teacher, teacher + 5.0, temperature)))  # softmax ignores shifts
    assert same == pytest.approx(0.0, abs=1e-6)


def test_one_real_fake_logit_gives_the_bernoulli_kl() -> None:
    t_logit, s_logit, temperature = np.array([[2.0], [-1.0]]), np.array([[0.5], [1.0]]), 2.0
    p, q = 1 / (1 + np.exp(-t_logit / temperature)), 1 / (1 + np.exp(-s_logit / temperature))
    bernoulli = temperature**2 * np.mean(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)))
    got = kd_loss(binary_logits(t_logit), binary_logits(s_logit), temperature)
    assert float(keras.ops.convert_to_numpy(got)) == pytest.approx(bernoulli, rel=1e-5)


# --------------------------------------------------------------------------------------------------
# The CLI path: train-features (teacher) -> distill --method knowledge


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The module's folder, also the cwd: no ./params.yaml there, so the built-in defaults apply."""
    folder = tmp_path_factory.mktemp("knowledge")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        yield folder


def overrides(root: Path) -> list[str]:
    settings = [
        "tracking.enabled=false",
        "data.image_size=8",
        f"data.processed_dir={root / 'data'}",
        f"train.models_dir={root / 'models'}",
        f"train.reports_dir={root / 'reports'}",
        f"evaluate.features_dir={root / 'models' / 'features'}",
        "evaluate.feature_width=16",
        "evaluate.feature_dim=32",
        "evaluate.feature_epochs=15",
        "distill.kd_width_factor=0.5",
        "distill.kd_epochs=20",
        "distill.speed_n=32",
    ]
    return [arg for s in settings for arg in ("-S", s)]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def teacher(root: Path) -> Path:
    run_ingest(load_params(None, overrides(root)[1::2]))
    result = invoke("train-features", *overrides(root))
    assert result.exit_code == 0, result.output
    return root / "models" / "features"


@pytest.fixture(scope="module")
def distilled(root: Path, teacher: Path) -> dict:
    result = invoke("distill", "--teacher", str(teacher), "--method", "knowledge", *overrides(root))
    assert result.exit_code == 0, result.output
    return json.loads((root / "reports" / "distill_features_knowledge" / "metrics.json").read_text())


def test_the_kd_student_is_within_the_bound_of_its_teachers_accuracy_on_digits(distilled: dict) -> None:
    teacher, student, baseline = distilled["teacher"], distilled["student"], distilled["baseline"]
    assert teacher["test_accuracy"] > 0.8  # a teacher worth distilling
    assert student["test_accuracy"] >= teacher["test_accuracy"] - ACCURACY_BOUND, distilled
    assert 0 <= baseline["test_accuracy"] <= 1 and distilled["kd_gain"] == pytest.approx(
        student["test_accuracy"] - baseline["test_accuracy"]
    )
    # Half the width: about a quarter of the conv parameters; the same architecture for student and baseline.
    assert student["parameters"] == baseline["parameters"] < 0.35 * teacher["parameters"]
    assert student["macs_per_image"] < 0.35 * teacher["macs_per_image"]
    assert all(m["images_per_second"] > 0 for m in (teacher, student, baseline))
    assert student["agreement_with_teacher"] >= 0.8


def test_the_student_is_a_feature_extractor_evaluation_can_load(root: Path, distilled: dict) -> None:
    from imagegen.data.processed import ProcessedDataset

    student = load_extractor(root / "models" / "features_student_knowledge")
    assert student.meta["width"] == 8 and student.meta["feature_dim"] == 16
    assert student.meta["distillation"]["method"] == "knowledge"
    images = ProcessedDataset.open(root / "data" / "digits").split("test").images[:64]
    features, probs = student.embed(np.asarray(images))
    assert features.shape == (64, 16) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    report_md = (root / "reports" / "distill_features_knowledge" / "report.md").read_text()
    assert "hard labels only" in report_md and "KD student" in report_md


def test_the_discriminator_term_vanishes_when_the_student_draws_the_teachers_images() -> None:
    params = Params.model_validate({"dcgan": {"base_filters": 8, "latent_dim": 16}})
    keras.utils.set_random_seed(0)
    teacher = build_family("dcgan", params, (8, 8, 1), 10)  # untrained: its outputs are not trivial
    cfg = DistillConfig(width_factor=1.0, discriminator_weight=1.0, temperature=2.0)
    dist = build_architecture(teacher, cfg)
    feed = {"z": np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32), "labels": np.zeros(16, "int32")}
    before = evaluate_loss(dist.family, feed)
    assert before["discriminator_kl"] > 0
    copy_network(teacher.networks["generator"], dist.student.networks["generator"])
    after = evaluate_loss(dist.family, feed)
    assert after["discriminator_kl"] == pytest.approx(0.0, abs=1e-6) and after["pixel_mse"] == pytest.approx(0.0)
    off = build_architecture(teacher, DistillConfig(width_factor=1.0))  # the default: weight 0, no term
    assert "discriminator_kl" not in evaluate_loss(off.family, feed)


# --------------------------------------------------------------------------------------------------
# Bad input


def one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


@pytest.mark.parametrize(
    ("override", "key"), [("distill.temperature=0", "temperature"), ("distill.kd_alpha=1.5", "kd_alpha")]
)
def test_impossible_kd_params_are_refused_naming_the_key(teacher: Path, override: str, key: str) -> None:
    result = invoke("distill", "--teacher", str(teacher), "--method", "knowledge", "-S", override)
    one_line_error(result, key)


def test_a_teacher_that_is_not_a_feature_classifier_is_refused_naming_it(root: Path, tmp_path: Path) -> None:
    one_line_error(
        invoke("distill", "--teacher", str(tmp_path), "--method", "knowledge", *overrides(root)),
        "not a feature classifier",
        str(tmp_path),
    )
    generator = tmp_path / "ddpm"
    generator.mkdir()
    (generator / "model.json").write_text(json.dumps({"family": "ddpm", "format_version": 1}))
    (generator / "classifier.weights.h5").write_bytes(b"")
    one_line_error(
        invoke("distill", "--teacher", str(generator), "--method", "knowledge", *overrides(root)),
        "not a feature classifier",
        "'ddpm'",
    )


def test_a_feature_classifier_is_refused_as_a_generator_teacher(root: Path, teacher: Path) -> None:
    result = invoke("distill", "--teacher", str(teacher), "--method", "architecture", *overrides(root))
    one_line_error(result, "--method knowledge")
