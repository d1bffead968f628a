"""Export: SavedModel and TFLite artifacts reproduce the Keras model's images, builtin ops only, atomically.

Tiny models (8x8 digits, trained 2 steps) keep the whole file well under a minute and a half on 2 cores;
each family is exported once per module and shared by the tests reading its output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from imagegen.artifact import load_model, save_model
from imagegen.config import Params, load_params
from imagegen.data.loader import BatchStream
from imagegen.data.processed import ProcessedDataset
from imagegen.errors import ConfigError, ExportError
from imagegen.sampler_settings import SamplerSettings
from imagegen.stages.export import failed_report_path, run_export
from imagegen.stages.ingest import run_ingest
from imagegen.training.families import build_family
from imagegen.training.loop import Trainer

tf = pytest.importorskip("tensorflow")

TINY = [
    "tracking.enabled=false",
    "data.image_size=8",
    "dcgan.base_filters=8",
    "dcgan.latent_dim=16",
    "ddpm.base_channels=8",
    "ddpm.groups=4",
    "ddpm.timesteps=50",
    "ddpm.attention_resolutions=[4]",
    "train.batch_size=16",
    "train.jit_compile=false",
    "train.checkpoint_every=1000",
    "train.sample_every=1000",
    "export.ddpm_steps=2",
    "export.parity_n=6",
    "export.latency_repeats=3",
    "export.tflite_variants=[float32, float16, int8]",
    "export.max_abs_error={savedmodel: 2, float32: 2, float16: 8, int8: 48}",
    "export.min_ssim={savedmodel: 0.99, float32: 0.99, float16: 0.95, int8: 0.6}",
]
ARTIFACTS = ("savedmodel", "float32", "float16", "int8")
FILES = {"float32": "model_float32.tflite", "float16": "model_float16.tflite", "int8": "model_int8.tflite"}


def tiny_params(*extra: str) -> Params:
    return load_params(None, [*TINY, *extra])


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_ingest(tiny_params(), tmp_path_factory.mktemp("digits") / "digits")


def train_tiny(params: Params, family_name: str, data: Path, root: Path) -> Path:
    """Two training steps (weights off their initialisation, EMA included), saved as a model folder."""
    keras.utils.set_random_seed(params.seed)
    ds = ProcessedDataset.open(data)
    family = build_family(family_name, params, ds.image_shape, ds.num_classes)
    stream = BatchStream(ds.split("train"), params.train.batch_size, params.seed)
    trainer = Trainer(family, stream, params.train, seed=params.seed, checkpoint_dir=root / "ckpt", show_progress=False)
    trainer.fit(2)
    return save_model(trainer.family, root / "model", {"step": 2})


@pytest.fixture(scope="module")
def exports(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """{family: (model_dir, export_dir)} for the DCGAN and the DDPM, exported with TINY params."""
    out = {}
    for family_name in ("dcgan", "ddpm"):
        root = tmp_path_factory.mktemp(family_name)
        model_dir = train_tiny(tiny_params(), family_name, digits, root)
        out[family_name] = (
            model_dir,
            run_export(tiny_params(), model_dir, root / "exports" / family_name, report_dir=root / "reports"),
        )
    return out


@pytest.mark.parametrize("family_name", ["dcgan", "ddpm"])
def test_every_artifact_reproduces_the_keras_images_within_its_thresholds(exports, family_name) -> None:
    _, out = exports[family_name]
    expected = ["savedmodel", "metrics.json", ".imagegen-output", *FILES.values()]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert (out / "savedmodel" / "saved_model.pb").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["family"] == family_name
    assert (metrics.get("ddpm_steps") == 2) if family_name == "ddpm" else ("ddpm_steps" not in metrics)
    assert sorted(metrics["artifacts"]) == sorted(ARTIFACTS)
    params = tiny_params()
    timing = json.loads((out.parent.parent / "reports" / "run.json").read_text())["artifacts"]
    assert (
        metrics["weights_digest"] == json.loads((exports[family_name][0] / "model.json").read_text())["weights_digest"]
    )
    for name, entry in metrics["artifacts"].items():
        assert set(entry) == {"bytes", "max_abs_error", "ssim", "passed"}  # latency is measured: run.json
        assert entry["passed"] is True, (name, entry)
        assert entry["max_abs_error"] <= params.export.max_abs_error[name], (name, entry)
        assert entry["ssim"] >= params.export.min_ssim[name], (name, entry)
        assert timing[name]["latency_ms_per_image"] > 0
        path = out / ("savedmodel" if name == "savedmodel" else FILES[name])
        on_disk = (
            sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
        )
        assert entry["bytes"] == on_disk
    # The float graphs compute what Keras computes: at most one level off after rounding.
    assert metrics["artifacts"]["savedmodel"]["max_abs_error"] <= 1
    assert metrics["artifacts"]["float32"]["max_abs_error"] <= 1
    assert not list(out.parent.glob(".*tmp"))  # no temporary folder left behind
    # The same figures, outside the DVC-tracked export folder, for `dvc metrics`, with a readable table.
    reports = out.parent.parent / "reports"
    assert json.loads((reports / "metrics.json").read_text()) == metrics
    table = (reports / "report.md").read_text()
    assert all(f"| {name} |" in table for name in ARTIFACTS) and "FAILED" not in table


@pytest.mark.parametrize("family_name", ["dcgan", "ddpm"])
def test_the_reloaded_savedmodel_is_deterministic_with_any_batch_and_matches_keras(exports, family_name) -> None:
    from imagegen.export.parity import keras_images

    model_dir, out = exports[family_name]
    fn = tf.saved_model.load(str(out / "savedmodel")).signatures["serving_default"]
    input_name = "x_T" if family_name == "ddpm" else "z"
    spec = fn.structured_input_signature[1]
    assert list(spec) == [input_name] and spec[input_name].shape[0] is None
    loaded = load_model(model_dir)
    shape = tuple(loaded.family.spec["image_shape"]) if family_name == "ddpm" else (16,)
    rng = np.random.default_rng(11)
    for batch in (3, 5):
        noise = rng.standard_normal((batch, *shape)).astype(np.float32)
        first = fn(**{input_name: tf.constant(noise)})["images"].numpy()
        second = fn(**{input_name: tf.constant(noise)})["images"].numpy()
        assert first.dtype == np.uint8 and first.shape == (batch, 8, 8, 1)
        np.testing.assert_array_equal(first, second)
        reference = keras_images(loaded, {input_name: noise}, ddpm_steps=2)
        assert np.max(np.abs(first.astype(int) - reference.astype(int))) <= 1


def test_tflite_files_hold_builtin_ops_only_and_take_any_batch(exports) -> None:
    from imagegen.export.parity import tflite_runner
    from imagegen.export.tflite import check_builtin_ops

    _, out = exports["ddpm"]
    for filename in FILES.values():
        ops = check_builtin_ops(out / filename)
        assert "CONV_2D" in ops and not any(op.startswith("Flex") for op in ops), ops
    run = tflite_runner(out / "model_float32.tflite")
    rng = np.random.default_rng(0)
    for batch in (2, 4, 2):
        images = run({"x_T": rng.standard_normal((batch, 8, 8, 1)).astype(np.float32)})
        assert images.dtype == np.uint8 and images.shape == (batch, 8, 8, 1)


@keras.saving.register_keras_serializable(package="test_export")
class Erf(keras.layers.Layer):
    """tf.math.erf (as in an exact GELU): TensorFlow has it, TFLite has no builtin kernel for it."""

    def call(self, x):
        return tf.math.erf(x)


def test_an_op_without_a_tflite_builtin_fails_naming_the_op(tmp_path) -> None:
    from imagegen.export.tflite import check_builtin_ops, convert

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(Erf()(keras.layers.Dense(4)(inputs))))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", lambda z: {"images": model(z)}, input_signature=[tf.TensorSpec((None, 4), tf.float32)]
    )
    archive.write_out(str(tmp_path / "sm"), verbose=False)

    with pytest.raises(ExportError, match=r"no TFLite builtin kernel: tf\.Erf\b"):
        convert(tmp_path / "sm", "float32")

    # The same graph converted with TF Select (never by the exporter) is refused by the op-list check.
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    with pytest.raises(ExportError, match=r"FlexErf \(tf\.Erf\)"):
        check_builtin_ops(converter.convert())


def test_an_artifact_past_its_threshold_fails_keeps_the_report_and_the_previous_export(exports, tmp_path) -> None:
    model_dir, good = exports["dcgan"]
    out = tmp_path / "exports" / "dcgan"
    shutil.copytree(good, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    params = tiny_params("export.max_abs_error={int8: -1}", "export.tflite_variants=[int8]")
    with pytest.raises(ExportError, match=r"int8: max abs error \d+ uint8 levels > threshold -1") as info:
        run_export(params, model_dir, out, report_dir=tmp_path / "reports")

    report_path = failed_report_path(out)
    assert str(report_path) in str(info.value)
    report = json.loads(report_path.read_text())
    assert sorted(report["artifacts"]) == ["int8", "savedmodel"]
    assert report["artifacts"]["int8"]["passed"] is False
    assert report["artifacts"]["savedmodel"]["passed"] is True  # savedmodel falls back to its default limits
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["dcgan", report_path.name]
    assert not (tmp_path / "reports").exists()  # nothing reported for a failed export


def test_export_refuses_a_backend_other_than_tensorflow(exports, monkeypatch) -> None:
    model_dir, _ = exports["dcgan"]
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ConfigError, match="TensorFlow backend.*'jax'"):
        run_export(tiny_params(), model_dir, model_dir.parent / "never", report_dir=model_dir.parent / "never-r")
    assert not (model_dir.parent / "never").exists()


def test_int8_fastest_of_a_diffusion_graph_converts_dynamic_range_only_and_says_why(exports) -> None:
    _, dcgan_out = exports["dcgan"]
    _, ddpm_out = exports["ddpm"]
    assert sorted(json.loads((dcgan_out / "metrics.json").read_text())["int8_quantization"]["candidates"]) == [
        "dynamic_range",
        "full_integer",
    ]
    choice = json.loads((ddpm_out / "metrics.json").read_text())["int8_quantization"]
    assert sorted(choice["candidates"]) == ["dynamic_range"] and choice["kind"] == "dynamic_range"
    assert "diffusion graph" in choice["not_tried"]["full_integer"]


def test_a_distilled_student_is_exported_on_its_own_timestep_grid(exports, tmp_path) -> None:
    """A progressive student records the DDIM grid it was trained for; the exported graph samples on that grid."""
    from imagegen.export.graph import build_serving
    from imagegen.export.parity import keras_images, savedmodel_runner

    model_dir, _ = exports["ddpm"]
    student = tmp_path / "student"
    shutil.copytree(model_dir, student)
    meta = json.loads((student / "model.json").read_text())
    grid = [49, 37, 12]  # not ddim_timesteps(50, 3) == [49, 24, 0]
    meta["sampling"] = {"sampler": "ddim", "steps": 3, "timesteps": grid, "eta": 0.0}
    (student / "model.json").write_text(json.dumps(meta))

    params = tiny_params("export.tflite_variants=[float32]")  # export.ddpm_steps=2 is overridden by the grid
    out = run_export(params, student, tmp_path / "exports" / "student", report_dir=tmp_path / "reports")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ddpm_steps"] == 3 and all(a["passed"] for a in metrics["artifacts"].values())

    loaded = load_model(student)
    noise = {"x_T": np.random.default_rng(5).standard_normal((4, 8, 8, 1)).astype(np.float32)}
    exported = savedmodel_runner(out / "savedmodel")(noise)
    on_grid = keras_images(loaded, noise, ddpm_steps=2)  # the model's own grid wins over ddpm_steps
    assert np.max(np.abs(exported.astype(int) - on_grid.astype(int))) <= 1
    assert build_serving(loaded, ddpm_steps=2).meta["timesteps"] == grid  # the graph unrolls the student's grid


def test_a_conditional_ddpm_trains_samples_with_guidance_and_exports_with_parity(digits, tmp_path) -> None:
    """End to end: a few training steps with labels (and label dropout), guided sampling at s = 3,
    export, and the exported graph draws what the guided Keras sampler draws for the same labels."""
    from imagegen.export.parity import keras_images, savedmodel_runner
    from imagegen.sampling import generate_images
    from imagegen.training.families import ddpm

    params = tiny_params(
        "ddpm.conditional=true", "sample.guidance_scale=3.0", "sample.steps=2", "export.tflite_variants=[float32]"
    )
    model_dir = train_tiny(params, "ddpm", digits, tmp_path)
    loaded = load_model(model_dir)

    images, labels = generate_images(model_dir, 6, seed=0, show_progress=False, defaults=params.sample)
    assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2, 3, 4, 5]
    guided, plain = (
        ddpm.generate(
            loaded.family,
            3,
            np.random.default_rng(0),
            np.arange(3),
            settings=SamplerSettings(steps=2, guidance_scale=s),
        )
        for s in (3.0, 1.0)
    )
    assert not np.array_equal(guided, plain)  # the null-label branch was trained and is used

    out = run_export(params, model_dir, tmp_path / "exports" / "ddpm", tmp_path / "reports")
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(a["passed"] for a in metrics["artifacts"].values()), metrics
    assert metrics["artifacts"]["savedmodel"]["max_abs_error"] <= 1

    noise = {
        "x_T": np.random.default_rng(3).standard_normal((4, 8, 8, 1)).astype(np.float32),
        "label": np.array([9, 0, 4, 4], np.int32),
    }
    exported = savedmodel_runner(out / "savedmodel")(noise)
    reference = keras_images(loaded, noise, ddpm_steps=2, guidance_scale=3.0)
    assert np.max(np.abs(exported.astype(int) - reference.astype(int))) <= 1
