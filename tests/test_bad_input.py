"""Bad input: each case a real `imagegen` command that must stop with exit status 2 and one line on stderr
naming the file or key and what was expected, leaving the previous output exactly as it was.

| input | named |
|---|---|
| `model.json` that is not JSON; a truncated `.weights.h5` | the file |
| `evaluate --samples` with 0 or 1 images | the .npz |
| a `folder` dataset with an empty class subfolder; a 1-image folder | the folder |
| `-S train.batch_size=true`; a duplicate key in params.yaml | the key (and the file) |
| a section-level validation error | the section and the reason, not the section's dict |
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imagegen.cli import app
from imagegen.outputs import MARKER, marker_text
from tests.bad_input_support import snapshot

OFF = ["-S", "tracking.enabled=false"]


@dataclass
class Case:
    args: list[str]  # the imagegen command line
    named: list[str]  # what the one-line message must contain
    protected: list[Path]  # previous outputs that must not change


def previous_output(folder: Path, kind: str) -> Path:
    """A folder standing for an earlier run's output."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text('{"fid": 1.0}\n')
    (folder / MARKER).write_text(marker_text(kind))  # as imagegen marks its outputs
    return folder


# --------------------------------------------------------------------------------------------------
# The cases


def model_json_not_json(tmp: Path, digits: Path, model: Path, helpers) -> Case:
    broken = shutil.copytree(model, tmp / "vae")
    (broken / "model.json").write_text('{"format_version": 1, "family": "vae", ')
    out = previous_output(tmp / "samples", "samples")
    return Case(
        ["sample", "--model", str(broken), "--out", str(out), *OFF],
        [str(broken / "model.json"), "not valid JSON"],
        [broken, out],
    )


def truncated_weights(tmp: Path, digits: Path, model: Path, helpers) -> Case:
    broken = shutil.copytree(model, tmp / "vae")
    weights = broken / "decoder.weights.h5"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = previous_output(tmp / "samples", "samples")
    return Case(
        ["sample", "--model", str(broken), "--out", str(out), *OFF],
        [str(weights), "expected the complete .weights.h5"],
        [broken, out],
    )


def samples_npz(count: int) -> Callable[..., Case]:
    def make(tmp: Path, digits: Path, model: Path, helpers) -> Case:
        path = tmp / f"{count}.npz"
        np.savez(path, images=np.zeros((count, 8, 8, 1), dtype=np.uint8))
        out = previous_output(tmp / "report", "evaluation")
        return Case(
            ["evaluate", "--samples", str(path), "--out", str(out), "--data", str(digits), *OFF],
            [str(path), f"{count} image(s)", "expected at least 4"],
            [out],
        )

    return make


def folder_with_empty_class(tmp: Path, digits: Path, model: Path, helpers) -> Case:
    root = helpers.write_image_folder(tmp / "images", {"red": (255, 0, 0), "blue": (0, 0, 255)}, per_class=4)
    (root / "green").mkdir()
    out = shutil.copytree(digits, tmp / "processed" / "folder")
    return Case(
        ["ingest", "-S", "data.name=folder", "-S", f"data.path={root}", "--out", str(out), *OFF],
        [str(root / "green"), "empty class folder"],
        [out],
    )


def folder_with_one_image(tmp: Path, digits: Path, model: Path, helpers) -> Case:
    root = helpers.write_image_folder(tmp / "images", {"red": (255, 0, 0)}, per_class=1)
    out = shutil.copytree(digits, tmp / "processed" / "folder")
    return Case(
        ["ingest", "-S", "data.name=folder", "-S", f"data.path={root}", "--out", str(out), *OFF],
        [str(root), "held-out split empty", "data.test_fraction"],
        [out],
    )


def boolean_batch_size(tmp: Path, digits: Path, model: Path, helpers) -> Case:
    out = shutil.copytree(model, tmp / "vae")
    return Case(
        ["train", "vae", "-S", "train.batch_size=true", "--data", str(digits), "--out", str(out), *OFF],
        ["train.batch_size", "expected an integer, got the boolean true"],
        [out],
    )


def duplicate_key(tmp: Path, digits: Path, model: Path, helpers) -> Case:
    params = tmp / "params.yaml"
    params.write_text("train:\n  batch_size: 8\n  batch_size: 16\n")
    out = shutil.copytree(model, tmp / "vae")
    return Case(
        ["train", "vae", "-p", str(params), "--data", str(digits), "--out", str(out), *OFF],
        [str(params), "duplicate key 'batch_size'"],
        [out, params],
    )


def section_level_error(tmp: Path, digits: Path, model: Path, helpers) -> Case:
    out = shutil.copytree(model, tmp / "ddpm")
    return Case(
        ["train", "ddpm", "-S", "ddpm.groups=5", "--data", str(digits), "--out", str(out), *OFF],
        ["ddpm: groups=5 must divide every U-Net width"],
        [out],
    )


CASES = {
    "model-json-not-json": model_json_not_json,
    "truncated-weights": truncated_weights,
    "evaluate-0-samples": samples_npz(0),
    "evaluate-1-sample": samples_npz(1),
    "folder-empty-class": folder_with_empty_class,
    "folder-one-image": folder_with_one_image,
    "boolean-for-an-int": boolean_batch_size,
    "duplicate-key": duplicate_key,
    "section-level-error": section_level_error,
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line_naming_it_and_keeps_the_previous_output(
    name: str, isolated_env, helpers, digits: Path, model: Path
) -> None:
    tmp = isolated_env.root / "case"
    tmp.mkdir()
    case = CASES[name](tmp, digits, model, helpers)
    before = snapshot(case.protected)

    result = CliRunner().invoke(app, case.args)

    message = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error: ") and "Traceback" not in result.output
    for text in case.named:
        assert text in message, (text, message)
    no_dict_dump = "{" not in message.partition(": ")[2] or name in ("model-json-not-json", "truncated-weights")
    assert no_dict_dump, message
    assert snapshot(case.protected) == before
