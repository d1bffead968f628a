"""bench/step_profile.py: a train step's kernels are sorted by what they compute, on both sides, and the
one-command profile prints its table and writes its JSON; a sampling step profiles the predictor imagegen samples
with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "step_profile.py"


@pytest.fixture(scope="module")
def step_profile():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import step_profile
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return step_profile


@pytest.mark.parametrize(
    ("op_type", "node", "category"),
    [
        ("_MklNativeConv2DBackpropFilterWithBias", "PartitionedCall/gradients/ddpm_unet_1/conv1/Conv2D", "convolution"),
        ("_MklNativeFusedConv2D", "StatefulPartitionedCall/ddpm_unet_1/stem/BiasAdd", "convolution"),
        ("_MklEinsum", "StatefulPartitionedCall/ddpm_unet_1/mid_attn/einsum/Einsum", "matmul"),
        ("Mul", "StatefulPartitionedCall/ddpm_unet_1/res0_norm1/mul_1", "normalization"),
        ("Mean", "StatefulPartitionedCall/ddpm_unet_1/up0_0_res_norm2/Mean", "normalization"),
        ("Sigmoid", "StatefulPartitionedCall/ddpm_unet_1/res0_silu1/Sigmoid", "elementwise"),
        ("ConcatV2", "StatefulPartitionedCall/ddpm_unet_1/up0_0_skip/concat", "data_movement"),
        ("Sum", "StatefulPartitionedCall/Sum_1", "reduction"),
        ("ResourceApplyAdam", "adam/ResourceApplyAdam_12", "optimizer"),
        ("Sqrt", "adam/global_norm/Sqrt", "optimizer"),
    ],
)  # fmt: skip
def test_tensorflow_kernels_are_sorted_by_what_they_compute(step_profile, op_type, node, category) -> None:
    assert step_profile.tensorflow_category(op_type, node) == category


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("aten::convolution_backward", "convolution"),
        ("aten::mkldnn_convolution", "convolution"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "matmul"),
        ("aten::mm", "matmul"),
        ("aten::native_group_norm_backward", "normalization"),
        ("aten::silu_backward", "elementwise"),
        ("aten::copy_", "data_movement"),
        ("aten::cat", "data_movement"),
        ("aten::sum", "reduction"),
        ("aten::_foreach_lerp_", "optimizer"),
        ("Optimizer.step#AdamW.step", "optimizer"),
        ("autograd::engine::evaluate_function: ConvolutionBackward0", "convolution"),
    ],
)
def test_pytorch_ops_are_sorted_the_same_way(step_profile, name, category) -> None:
    assert step_profile.torch_category(name) == category


def test_a_summary_is_per_step_with_shares_that_add_up(step_profile) -> None:
    events = [("convolution", "Conv2D", 6.0), ("elementwise", "Mul", 3.0), ("elementwise", "Mul", 1.0)]
    summary = step_profile.summarize(events, steps=2)
    assert summary["kernel_ms_per_step"] == 5.0
    assert summary["ops_per_step"] == 1.5
    assert summary["categories"]["convolution"] == {"ms_per_step": 3.0, "share": 0.6}
    assert summary["categories"]["elementwise"]["ms_per_step"] == 2.0
    assert sum(c["share"] for c in summary["categories"].values()) == pytest.approx(1.0)
    assert summary["top_ops"][0] == ["Conv2D", 3.0]


def test_quick_profile_prints_both_sides_and_writes_json(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch is the benchmark-only extra (.[bench]); CI does not install it")
    pytest.importorskip("diffusers", reason="diffusers is the benchmark-only extra (.[bench]); CI does not install it")
    out = tmp_path / "profile.json"
    args = ["--size", "16", "--batch", "8", "--steps", "1", "--warmup", "1", "--references", "eager:1"]
    done = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "reference eager:1" in done.stdout and "convolution" in done.stdout
    report = json.loads(out.read_text())
    assert report["benchmark"] == "train_step_profile"
    ours, reference = report["results"]
    assert ours["side"] == "ours" and reference["side"] == "reference eager:1"
    for side in (ours, reference):
        assert side["wall_ms_per_step"] > 0 and side["ops_per_step"] > 0
        assert side["categories"]["convolution"]["ms_per_step"] > 0
        total = sum(c["ms_per_step"] for c in side["categories"].values())
        assert total == pytest.approx(side["kernel_ms_per_step"], rel=0.01)


def test_a_sampling_step_profile_traces_the_predictor_without_training_kernels() -> None:
    args = ["--worker", "ours", "--what", "sample", "--size", "16", "--batch", "4", "--steps", "2", "--warmup", "1"]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    ours = json.loads(done.stdout.strip().splitlines()[-1])
    assert ours["side"] == "ours" and ours["cpu_math"] in ("float32", "bf16")
    assert ours["wall_ms_per_step"] > 0 and ours["ops_per_step"] > 0
    assert ours["categories"]["convolution"]["ms_per_step"] > 0
    assert ours["categories"]["matmul"]["ms_per_step"] > 0  # the attention block at side 16
    assert ours["categories"]["optimizer"]["ms_per_step"] == 0
    assert not any("Backprop" in op or "Apply" in op for op, _ in ours["top_ops"])
