"""int8 TFLite: full-integer quantization (int8 weights *and* activations, calibrated on the generator's inputs),
the export's choice between it and dynamic-range int8, and one-line errors for bad calibration data or names.

A tiny DCGAN (8x8 digits, a few training steps) keeps the file well under a minute on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from imagegen.artifact import save_model
from imagegen.config import Params, load_params
from imagegen.data.loader import BatchStream
from imagegen.data.processed import ProcessedDataset
from imagegen.errors import ConfigError, ExportError
from imagegen.export.graph import InputSpec
from imagegen.export.tflite import (
    Conversion,
    convert,
    int8_candidates,
    int8_kinds,
    pick_int8,
    representative_dataset,
)
from imagegen.stages.export import run_export
from imagegen.stages.ingest import run_ingest
from imagegen.training.families import build_family
from imagegen.training.loop import Trainer

tf = pytest.importorskip("tensorflow")

TINY = [
    "tracking.enabled=false",
    "data.image_size=8",
    "dcgan.base_filters=8",
    "dcgan.latent_dim=16",
    "train.batch_size=16",
    "train.jit_compile=false",
    "train.checkpoint_every=1000",
    "train.sample_every=1000",
    "export.parity_n=8",
    "export.latency_repeats=3",
    "export.calibration_n=32",
    "export.tflite_variants=[int8]",
]
Z = [InputSpec("z", (16,), "float32")]


def tiny_params(*extra: str) -> Params:
    return load_params(None, [*TINY, *extra])


@pytest.fixture(scope="module")
def dcgan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DCGAN trained 20 steps (off its initialisation), saved as a model folder."""
    root = tmp_path_factory.mktemp("int8")
    params = tiny_params()
    data = run_ingest(params, root / "digits")
    keras.utils.set_random_seed(params.seed)
    ds = ProcessedDataset.open(data)
    family = build_family("dcgan", params, ds.image_shape, ds.num_classes)
    stream = BatchStream(ds.split("train"), params.train.batch_size, params.seed)
    trainer = Trainer(family, stream, params.train, seed=params.seed, checkpoint_dir=root / "ckpt", show_progress=False)
    trainer.fit(20)
    return save_model(trainer.family, root / "model", {"step": 20})


@pytest.fixture(scope="module")
def full_integer(dcgan: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("full")
    return run_export(tiny_params("export.int8_quantization=full_integer"), dcgan, root / "out", root / "reports")


def test_full_integer_int8_computes_in_int8_and_passes_parity(full_integer: Path) -> None:
    from imagegen.export.tflite import make_interpreter

    assert sorted(p.name for p in full_integer.iterdir()) == [
        ".imagegen-output",
        "metrics.json",
        "model_int8.tflite",
        "savedmodel",
    ]
    interp = make_interpreter(full_integer / "model_int8.tflite")
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    heavy = [
        op for op in interp._get_ops_details() if op["op_name"] in ("FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_2D")
    ]
    assert {op["op_name"] for op in heavy} >= {"FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_2D"}
    for op in heavy:  # activations in and out, and the weights, are int8 tensors with a quantization scale
        data_in = [i for i in op["inputs"] if i >= 0 and tensors[i]["dtype"] != np.int32]  # int32: shapes, bias
        for index in [*data_in, *op["outputs"]]:
            assert tensors[index]["dtype"] == np.int8, (op["op_name"], tensors[index]["name"], tensors[index]["dtype"])
            assert tensors[index]["quantization_parameters"]["scales"].size > 0
    # The signature still takes float32 noise and returns uint8 images (QUANTIZE in, DEQUANTIZE + CAST out).
    runner = interp.get_signature_runner("serving_default")
    assert runner.get_input_details()["z"]["dtype"] == np.float32
    assert runner.get_output_details()["images"]["dtype"] == np.uint8

    metrics = json.loads((full_integer / "metrics.json").read_text())
    params = tiny_params()
    entry = metrics["artifacts"]["int8"]
    assert entry["passed"] is True, entry
    assert entry["max_abs_error"] <= params.export.max_abs_error["int8"]
    assert entry["ssim"] >= params.export.min_ssim["int8"]
    assert metrics["int8_quantization"]["kind"] == "full_integer"
    assert list(metrics["int8_quantization"]["candidates"]) == ["full_integer"]


def test_fastest_keeps_the_int8_kind_that_passes_and_is_faster_and_says_why(dcgan: Path, tmp_path: Path) -> None:
    out = run_export(tiny_params(), dcgan, tmp_path / "out", tmp_path / "reports")  # int8_quantization: fastest
    assert sorted(p.name for p in out.iterdir()) == [
        ".imagegen-output",
        "metrics.json",
        "model_int8.tflite",
        "savedmodel",
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    choice = metrics["int8_quantization"]
    assert sorted(choice["candidates"]) == ["dynamic_range", "full_integer"]
    assert (choice["kind"], choice["why"]) == pick_int8(choice["candidates"])
    assert metrics["artifacts"]["int8"] == choice["candidates"][choice["kind"]]
    assert metrics["artifacts"]["int8"]["bytes"] == (out / "model_int8.tflite").stat().st_size
    assert f"int8 kept: {choice['kind']}" in (tmp_path / "reports" / "report.md").read_text()


def entry(ms: float, passed: bool = True) -> dict:
    return {"latency_ms_per_image": ms, "passed": passed, "max_abs_error": 0, "ssim": 1.0, "bytes": 1}


def test_pick_int8_keeps_full_integer_when_it_passes_parity_whatever_the_timings() -> None:
    # a fixed rule, not a timing: the same model always exports the same int8 file
    assert pick_int8({"dynamic_range": entry(7.5), "full_integer": entry(0.5)})[0] == "full_integer"
    assert pick_int8({"dynamic_range": entry(0.5), "full_integer": entry(7.5)})[0] == "full_integer"
    kind, why = pick_int8({"dynamic_range": entry(7.5), "full_integer": entry(0.5, passed=False)})
    assert kind == "dynamic_range" and "full_integer failed" in why and "ms" not in why
    assert pick_int8({"dynamic_range": entry(7.5, False), "full_integer": entry(9.0)})[0] == "full_integer"
    assert pick_int8({"dynamic_range": entry(7.5, False), "full_integer": entry(0.5, False)}) == (
        "dynamic_range",
        "no kind passes parity",
    )


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ({"x_T": np.zeros((4, 16), np.float32)}, r"inputs \['x_T'\], expected the signature's \['z'\]"),
        ({"z": np.zeros((4, 8), np.float32)}, r"input 'z' has shape \(4, 8\), expected \(N >= 1, 16\)"),
        ({"z": np.zeros((0, 16), np.float32)}, r"input 'z' has shape \(0, 16\), expected \(N >= 1, 16\)"),
        ({"z": np.zeros((4, 16), np.float64)}, r"input 'z' is float64, expected float32"),
        ({"z": np.full((4, 16), np.nan, np.float32)}, r"input 'z' holds NaN or infinite values"),
    ],
)
def test_a_bad_representative_dataset_is_a_one_line_error_naming_the_input(samples: dict, message: str) -> None:
    with pytest.raises(ExportError, match=message) as info:
        representative_dataset(samples, Z)
    assert "\n" not in str(info.value)


def test_a_good_representative_dataset_feeds_one_sample_at_a_time() -> None:
    z = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    fed = list(representative_dataset({"z": z}, Z)())
    assert len(fed) == 3 and all(set(s) == {"z"} and s["z"].shape == (1, 16) for s in fed)
    np.testing.assert_array_equal(np.concatenate([s["z"] for s in fed]), z)


def test_unknown_variants_and_a_missing_calibration_are_one_line_errors(full_integer: Path) -> None:
    saved = full_integer / "savedmodel"
    for call, message in [
        (lambda: convert(saved, "int4"), r"unknown variant 'int4'; expected one of \('float32', 'float16', 'int8'\)"),
        (lambda: convert(saved, "int8", int8_kind="int4"), r"unknown int8 kind 'int4'"),
        (lambda: convert(saved, "int8", int8_kind="full_integer"), r"full_integer export needs a representative"),
    ]:
        with pytest.raises(ExportError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    for key in ("tflite_variants=[int4]", "int8_quantization=int4"):  # params are checked before any export
        with pytest.raises(ConfigError, match=rf"export\.{key.split('=')[0]}\b.*'int4'"):
            tiny_params(f"export.{key}")


def test_fastest_tries_both_int8_kinds_except_full_integer_on_a_diffusion_graph() -> None:
    assert int8_kinds("fastest", diffusion=False) == ({}, ("dynamic_range", "full_integer"))
    not_tried, kinds = int8_kinds("fastest", diffusion=True)
    assert kinds == ("dynamic_range",) and "never passed parity" in not_tried["full_integer"]
    assert int8_kinds("full_integer", diffusion=True) == ({}, ("full_integer",))  # asked for by name: converted
    assert int8_kinds("dynamic_range", diffusion=False) == ({}, ("dynamic_range",))


def test_of_several_int8_kinds_one_that_fails_to_convert_is_left_out_with_a_warning(tmp_path: Path) -> None:
    float32 = Conversion(tmp_path / "model_float32.tflite", "float32")
    dynamic = Conversion(tmp_path / "model_int8.dynamic_range.tflite", "int8", "dynamic_range")
    full = Conversion(tmp_path / "model_int8.full_integer.tflite", "int8", "full_integer", lambda: iter(()))
    no_kernel = ExportError("TFLite export (int8 full_integer): op(s) with no TFLite builtin kernel: tf.Erf")

    with pytest.warns(UserWarning, match="int8 full_integer left out: .*tf.Erf"):
        kept = int8_candidates([float32, dynamic, full], [float32.dest, dynamic.dest, no_kernel])
    assert kept == {"dynamic_range": dynamic.dest}

    with pytest.raises(ExportError, match="tf.Erf"):  # the only kind asked for: its failure is the export's
        int8_candidates([float32, full], [float32.dest, no_kernel])
    with pytest.raises(ExportError, match="no kind of"):
        int8_candidates([dynamic, full], [ExportError("dynamic failed"), no_kernel])
    assert int8_candidates([float32], [float32.dest]) == {}  # no int8 asked for
