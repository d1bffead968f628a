"""Params files and ``-S`` values that are not what the schema expects: each is refused by the real `imagegen`
command with exit status 2 and one line on stderr naming the file or key and what was expected, within a bounded
time and memory, and without writing anything. Also: YAML 1.2 booleans, so ``train.mixed_precision: off`` (the value
params.yaml documents) is the string ``off``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from imagegen.cli import app
from imagegen.config import MAX_BATCH_SIZE, MAX_YAML_ALIASES, MAX_YAML_BYTES, MAX_YAML_DEPTH, load_params
from imagegen.outputs import write_marker
from imagegen.stages.ingest import run_ingest

OFF = ["-S", "tracking.enabled=false"]
BUDGET = "expected YAML within the input budget"


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``: equal snapshots mean nothing was written, changed or removed."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def previous_output(folder: Path) -> Path:
    """A folder standing for an earlier run's model output (marked as imagegen's, so it may be replaced)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text('{"fid": 1.0}\n')
    write_marker(folder, "model")
    return folder


def train_args(root: Path, *extra: str, data: Path | None = None) -> list[str]:
    """`imagegen train vae` into a previous output folder, with ``extra`` options."""
    out = previous_output(root / "models" / "vae")
    return ["train", "vae", "--data", str(data or root / "data"), "--out", str(out), *OFF, *extra]


def assert_refused(root: Path, args: list[str], named: list[str]) -> str:
    """Run ``imagegen args``: exit 2, one ``error:`` line containing every ``named`` text, nothing written."""
    before = snapshot(root)
    result = CliRunner().invoke(app, args)
    message = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error: ") and "Traceback" not in result.output, message
    for text in named:
        assert text in message, (text, message)
    assert snapshot(root) == before
    return message


def params_output(args: list[str]) -> dict:
    """The resolved params `imagegen params` prints for ``args`` (which must load)."""
    result = CliRunner().invoke(app, ["params", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return yaml.safe_load(result.stdout)


# --------------------------------------------------------------------------------------------------
# The params file itself


def test_params_file_that_is_not_utf8_is_refused_naming_the_file(isolated_env) -> None:
    params = isolated_env.root / "bad.yaml"
    params.write_bytes(b"train:\n  batch_size: 8\n  # caf\xe9 latin-1\n")

    assert_refused(
        isolated_env.root,
        train_args(isolated_env.root, "-p", str(params)),
        [str(params), "expected UTF-8 YAML", "line 3"],
    )


def test_params_path_that_is_a_folder_is_refused_naming_it(isolated_env) -> None:
    folder = isolated_env.root / "params"
    folder.mkdir()

    assert_refused(
        isolated_env.root,
        train_args(isolated_env.root, "-p", str(folder)),
        [str(folder), "is a folder", "expected a YAML params file"],
    )


# --------------------------------------------------------------------------------------------------
# The YAML input budget


def alias_bomb(levels: int = 9, width: int = 9) -> list[str]:
    """Nested anchors, each level ``width`` aliases of the one before: ``width**levels`` values once expanded."""
    entries = [f"l0: &l0 [{', '.join(['1'] * width)}]"]
    entries += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return entries


# Each case: (what the message must name, the options that give the input).


def bomb_file(root: Path) -> tuple[str, list[str]]:
    path = root / "bomb.yaml"
    path.write_text("\n".join(alias_bomb()) + "\n")
    return str(path), ["-p", str(path)]


def bomb_override(root: Path) -> tuple[str, list[str]]:
    value = "{" + ", ".join(alias_bomb()) + "}"
    return "train.batch_size=", ["-S", f"train.batch_size={value}"]


def too_many_aliases(root: Path) -> tuple[str, list[str]]:
    path = root / "aliases.yaml"
    path.write_text("a: &a 1\nb: [" + ", ".join(["*a"] * (MAX_YAML_ALIASES + 1)) + "]\n")
    return str(path), ["-p", str(path)]


def too_large(root: Path) -> tuple[str, list[str]]:
    path = root / "large.yaml"
    path.write_text("seed: 0\n" + "# padding\n" * (MAX_YAML_BYTES // 10 + 1))
    return str(path), ["-p", str(path)]


def too_deep(root: Path) -> tuple[str, list[str]]:
    depth = MAX_YAML_DEPTH + 1
    return "train.batch_size=", ["-S", "train.batch_size=" + "[" * depth + "]" * depth]


BUDGET_CASES = {
    "alias-bomb-file": bomb_file,
    "alias-bomb-override": bomb_override,
    "too-many-aliases": too_many_aliases,
    "larger-than-the-budget": too_large,
    "nested-too-deep": too_deep,
}


def test_anchors_and_merge_keys_within_the_budget_still_load(isolated_env) -> None:
    path = isolated_env.root / "params.yaml"
    path.write_text("ddpm: &unet {base_channels: 8, groups: 4}\nldm:\n  <<: *unet\n  groups: 8\n")

    ldm = params_output(["-p", str(path)])["ldm"]

    assert (ldm["base_channels"], ldm["groups"]) == (8, 8)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(BUDGET_CASES))
def test_yaml_alias_bomb_is_refused_within_its_budget(isolated_env, name: str) -> None:
    source, args = BUDGET_CASES[name](isolated_env.root)
    started = time.monotonic()

    message = assert_refused(isolated_env.root, train_args(isolated_env.root, *args), [source, BUDGET])

    assert time.monotonic() - started < 5  # refused while composed: nothing of the expansion is built
    assert len(message) < 400, message  # and nothing of it is printed


# --------------------------------------------------------------------------------------------------
# YAML 1.2 booleans


@pytest.mark.parametrize("given", ["override", "file"])
def test_mixed_precision_off_as_params_yaml_documents_it_loads_as_the_string_off(isolated_env, given: str) -> None:
    if given == "override":
        args = ["-S", "train.mixed_precision=off"]
    else:
        path = isolated_env.root / "params.yaml"
        path.write_text("train:\n  mixed_precision: off   # float32\n")
        args = ["-p", str(path)]

    assert params_output(args)["train"]["mixed_precision"] == "off"


def test_mixed_precision_off_reaches_the_schema_as_off(isolated_env) -> None:
    path = isolated_env.root / "params.yaml"
    path.write_text("train:\n  mixed_precision: off\n")

    assert load_params(path).train.mixed_precision == "off"
    assert load_params(None, ["train.mixed_precision=off"]).train.mixed_precision == "off"


def test_yaml_1_1_boolean_words_stay_strings_and_booleans_are_true_or_false(isolated_env) -> None:
    assert params_output(["-S", "data.download=false"])["data"]["download"] is False
    assert_refused(
        isolated_env.root,
        train_args(isolated_env.root, "-S", "data.download=yes"),
        ["data.download", "expected true or false, got 'yes'"],
    )


# --------------------------------------------------------------------------------------------------
# Batch sizes


@pytest.mark.parametrize(
    "key",
    [
        "train.batch_size",
        "vae.batch_size",
        "ldm.batch_size",
        "train.grid_size",
        "evaluate.batch_size",
        "distill.batch_size",
        "distill.speed_n",
    ],
)
def test_absurd_batch_size_is_refused_at_load_naming_the_key_and_the_cap(isolated_env, key: str) -> None:
    assert_refused(
        isolated_env.root,
        train_args(isolated_env.root, "-S", f"{key}=100000"),
        [key, "100000", str(MAX_BATCH_SIZE)],
    )


@pytest.mark.parametrize("key", ["train.batch_size", "vae.batch_size"])
def test_batch_size_larger_than_the_training_split_is_refused_before_training(isolated_env, helpers, key: str) -> None:
    images = helpers.write_image_folder(isolated_env.root / "images", {"red": (255, 0, 0), "blue": (0, 0, 255)})
    params = load_params(None, ["tracking.enabled=false", "data.name=folder", f"data.path={images}"])
    data = run_ingest(params, isolated_env.root / "processed")
    train_count = json.loads((data / "manifest.json").read_text())["counts"]["train"]

    assert_refused(
        isolated_env.root,
        train_args(isolated_env.root, "-S", f"{key}=64", data=data),
        [f"{key} = 64", str(data), f"{train_count} images"],
    )


# --------------------------------------------------------------------------------------------------
# The registry name template


def test_registry_name_template_with_an_unknown_field_is_refused_at_load(isolated_env) -> None:
    record = previous_output(isolated_env.root / "reports") / "metrics.json"
    args = ["register", "--model", "models/vae", "--evaluation", str(record), "--out", str(record), *OFF]

    assert_refused(
        isolated_env.root,
        [*args, "-S", "registry.name_template=imagegen-{famly}"],
        ["registry.name_template", "unknown field {famly}", "{family}", "{dataset}"],
    )
