"""``train.cpu_math``: the train and distill commands let oneDNN compute float32 convolutions in bfloat16 where
the family declares that it pays and the CPU has bfloat16 instructions, and every model says which math it was
trained with, as measured in the process that trained it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from imagegen.cli import app
from imagegen.provenance import DIGEST_KEY
from imagegen.startup import CPU_MATH_ENV, cpu_math_requested
from imagegen.training.families import FAMILIES, family_spec
from imagegen.training.precision import resolve_cpu_math

TINY_DDPM = [
    "tracking.enabled=false",
    "data.image_size=8",
    "ddpm.base_channels=8",
    "ddpm.groups=4",
    "ddpm.steps=3",
    "train.batch_size=8",
    "train.grid_size=4",
    "dcgan.steps=3",
    "dcgan.base_filters=8",
    "distill.start_steps=4",
    "distill.target_steps=2",
    "distill.steps_per_round=2",
]


# A 3x3, 32-channel convolution under oneDNN's bfloat16 math mode, against float64: about 1e-7 relative in float32,
# 1e-3 from bfloat16 operands. Measured in a fresh process, the way an `imagegen train` process gets the mode;
# the CPU's flags do not tell (an AVX512_BF16 CPU without AMX, such as AMD's Zen 4, computes it in float32).
_MATH_MODE_PROBE = f"""
import os
os.environ[{CPU_MATH_ENV!r}] = "BF16"
import numpy as np
import tensorflow as tf
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 16, 16, 32))
w = rng.standard_normal((3, 3, 32, 32))
exact = tf.nn.conv2d(x, w, 1, "SAME").numpy()
y = tf.nn.conv2d(x.astype(np.float32), w.astype(np.float32), 1, "SAME").numpy()
print("bf16" if np.abs(y - exact).max() > 1e-5 * np.abs(exact).max() else "float32")
"""


def bf16_request_gets() -> str:
    """What a request for bfloat16 convolutions gets on this CPU: ``bf16`` or ``float32``."""
    env = {k: v for k, v in os.environ.items() if k != CPU_MATH_ENV}
    proc = subprocess.run([sys.executable, "-c", _MATH_MODE_PROBE], capture_output=True, text=True, env=env, check=True)
    return proc.stdout.split()[-1]


def imagegen(cwd: Path, *args: str, env_extra: dict[str, str] | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if k != CPU_MATH_ENV}
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-m", "imagegen", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def trained_with(model: Path) -> dict:
    return json.loads((model / "model.json").read_text())["trained_with"]


def sets(*overrides: str) -> list[str]:
    return [arg for item in (*TINY_DDPM, *overrides) for arg in ("-S", item)]


def test_auto_is_each_familys_own_declaration_and_an_explicit_setting_wins() -> None:
    chosen = {name: resolve_cpu_math("auto", family_spec(name)) for name in FAMILIES}
    assert chosen == {"dcgan": "bf16", "vae": "bf16", "ddpm": "bf16", "ldm": "float32", "stylegan2": "bf16"}
    for name in FAMILIES:
        assert resolve_cpu_math("float32", family_spec(name)) == "float32"
        assert resolve_cpu_math("bf16", family_spec(name)) == "bf16"


def test_a_request_holds_within_its_block_and_keeps_the_users_own_setting() -> None:
    env: dict[str, str] = {}
    with cpu_math_requested("float32", env) as asked:  # oneDNN's default: nothing to ask
        assert asked is False and env == {}
    with cpu_math_requested("bf16", env) as asked:
        assert asked is True and env == {CPU_MATH_ENV: "BF16"}
    assert env == {}  # the processes started afterwards compute in float32
    mine = {CPU_MATH_ENV: "STRICT"}
    with cpu_math_requested("bf16", mine) as asked:
        assert asked is False and mine == {CPU_MATH_ENV: "STRICT"}
    assert mine == {CPU_MATH_ENV: "STRICT"}


def test_the_train_command_leaves_no_onednn_setting_to_the_processes_its_caller_starts(tmp_path: Path) -> None:
    """In-process callers (a notebook, a test) later start `dvc repro` or an export: they must not inherit bf16."""
    assert CPU_MATH_ENV not in os.environ
    missing = tmp_path / "no-dataset"  # the stage fails inside the request: the switch goes all the same
    result = CliRunner().invoke(app, ["train", "ddpm", "--data", str(missing), "--out", str(tmp_path / "m"), *sets()])
    assert result.exit_code == 2 and str(missing) in result.output
    assert CPU_MATH_ENV not in os.environ


def test_the_train_and_distill_commands_train_with_the_math_the_setting_asks_for(tmp_path: Path) -> None:
    imagegen(tmp_path, "ingest", *sets())
    imagegen(tmp_path, "train", "ddpm", *sets(), "--out", "ddpm")
    imagegen(tmp_path, "train", "ddpm", *sets("train.cpu_math=float32"), "--out", "ddpm_float32")
    imagegen(tmp_path, "train", "dcgan", *sets(), "--out", "dcgan")
    imagegen(tmp_path, "distill", "--teacher", "ddpm", "--method", "progressive", *sets(), "--out", "student")

    bf16_or_float32 = bf16_request_gets()
    assert trained_with(tmp_path / "ddpm")["cpu_math"] == bf16_or_float32  # DDPM declares bf16
    assert trained_with(tmp_path / "ddpm_float32")["cpu_math"] == "float32"
    assert trained_with(tmp_path / "dcgan")["cpu_math"] == bf16_or_float32  # its transposed convolutions too
    assert trained_with(tmp_path / "student" / "final")["cpu_math"] == bf16_or_float32  # the teacher's family decides
    # What the models say is what their weights saw: the same seed trains other weights in the other math.
    bf16_digest, float32_digest = (
        json.loads((tmp_path / name / "model.json").read_text())[DIGEST_KEY] for name in ("ddpm", "ddpm_float32")
    )
    assert (bf16_digest != float32_digest) == (bf16_or_float32 == "bf16")
    # The user's own oneDNN setting is kept: STRICT in the environment trains a DDPM in float32.
    imagegen(tmp_path, "train", "ddpm", *sets(), "--out", "ddpm_strict", env_extra={CPU_MATH_ENV: "STRICT"})
    assert trained_with(tmp_path / "ddpm_strict")["cpu_math"] == "float32"
