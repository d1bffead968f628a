"""params.yaml schema and -S overrides: every bad input stops with a message naming the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from imagegen.cli import app
from imagegen.config import Params, dump_params, load_params, parse_override, validate
from imagegen.errors import ConfigError

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(autouse=True)
def _in_tmp(isolated_env):
    """Run from an empty tmp folder so load_params(None) sees built-in defaults, not a params.yaml in cwd."""
    return isolated_env


# --------------------------------------------------------------------------------------------------
# Valid inputs


def test_defaults_validate_and_round_trip_through_yaml():
    params = load_params(None)
    assert params == Params()
    assert params.data.name == "digits"
    assert params.train.batch_size > 0
    assert validate(yaml.safe_load(dump_params(params))) == params


def test_repo_params_yaml_loads():
    params = load_params(REPO_PARAMS)
    tree = yaml.safe_load(REPO_PARAMS.read_text())
    assert params.seed == tree["seed"]
    assert params.data.name == tree["data"]["name"]
    assert params.data.image_size == tree["data"]["image_size"]


def test_flat_dict_uses_dotted_keys():
    flat = Params().to_flat_dict()
    assert flat["data.name"] == "digits"
    assert flat["train.batch_size"] == Params().train.batch_size


# --------------------------------------------------------------------------------------------------
# Errors name the key, the value and what was expected


def test_unknown_top_level_key_names_the_key():
    with pytest.raises(ConfigError) as err:
        load_params(None, ["sede=1"])
    assert "unknown key 'sede'" in str(err.value)


def test_unknown_nested_key_names_the_dotted_key():
    with pytest.raises(ConfigError) as err:
        load_params(None, ["data.nme=mnist"])
    msg = str(err.value)
    assert "unknown key 'data.nme'" in msg
    assert "mnist" in msg


def test_unknown_key_in_params_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("data:\n  imgsize: 8\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "data.imgsize" in msg


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError) as err:
        load_params(None, ["data.image_size=abc"])
    msg = str(err.value)
    assert "data.image_size" in msg
    assert "'abc'" in msg
    assert "integer" in msg


def test_negative_batch_size_names_key_value_and_bound():
    with pytest.raises(ConfigError) as err:
        load_params(None, ["train.batch_size=-3"])
    msg = str(err.value)
    assert "train.batch_size" in msg
    assert "-3" in msg
    assert "greater than 0" in msg


def test_unknown_dataset_name_lists_the_allowed_names():
    with pytest.raises(ConfigError) as err:
        load_params(None, ["data.name=imagenet"])
    msg = str(err.value)
    assert "data.name" in msg and "'imagenet'" in msg
    assert "'mnist'" in msg and "'cifar10'" in msg


def test_override_into_a_value_names_the_value():
    with pytest.raises(ConfigError) as err:
        load_params(REPO_PARAMS, ["seed.x=1"])  # seed is set in the file
    assert "'seed' is a value, not a section" in str(err.value)
    assert "seed.x=1" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_params(None, ["seed.x=1"])  # built-in defaults: caught by validation instead
    assert "seed = {'x': 1}" in str(err.value)
    assert "integer" in str(err.value)


def test_missing_explicit_params_file_names_it(tmp_path):
    missing = tmp_path / "nope" / "params.yaml"
    with pytest.raises(ConfigError) as err:
        load_params(missing)
    assert str(missing) in str(err.value)
    assert "not found" in str(err.value)


def test_params_file_that_is_not_a_mapping_names_it(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value)
    assert "mapping" in str(err.value)


def test_absent_default_params_file_means_defaults():
    assert not Path("params.yaml").exists()
    assert load_params(None) == Params()


# --------------------------------------------------------------------------------------------------
# -S parsing, as `dvc exp run -S` spells it


def test_override_value_is_read_as_yaml_int():
    assert parse_override("a.b=1") == ("a.b", 1)


def test_override_null_gives_none():
    assert parse_override("data.path=null") == ("data.path", None)
    assert load_params(None, ["data.path=/x", "data.path=null"]).data.path is None


def test_override_with_params_yaml_prefix_is_accepted():
    assert parse_override("params.yaml:data.name=mnist") == ("data.name", "mnist")
    assert load_params(None, ["params.yaml:data.name=mnist"]).data.name == "mnist"


def test_override_for_another_file_is_rejected():
    with pytest.raises(ConfigError) as err:
        parse_override("other.yaml:data.name=mnist")
    assert "other.yaml:data.name=mnist" in str(err.value)


def test_override_without_equals_is_rejected_with_the_expected_form():
    with pytest.raises(ConfigError) as err:
        parse_override("data.name")
    msg = str(err.value)
    assert "'data.name'" in msg
    assert "KEY=VALUE" in msg


def test_override_with_empty_key_part_is_rejected():
    with pytest.raises(ConfigError) as err:
        parse_override("data..name=x")
    assert "data..name=x" in str(err.value)


def test_overrides_apply_in_order_and_keep_other_values():
    params = load_params(None, ["train.batch_size=8", "train.batch_size=32", "data.name=mnist"])
    assert params.train.batch_size == 32
    assert params.data.name == "mnist"
    assert params.data.image_size == Params().data.image_size


def test_assignment_is_revalidated():
    params = Params()
    with pytest.raises(ValueError):
        params.data.image_size = -1  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------------
# CLI


def test_cli_params_prints_resolved_yaml_with_override():
    result = CliRunner().invoke(app, ["params", "-S", "data.name=mnist"])
    assert result.exit_code == 0, result.output
    assert "name: mnist" in result.stdout
    resolved = yaml.safe_load(result.stdout)
    assert resolved["data"]["name"] == "mnist"
    assert resolved["train"]["batch_size"] == Params().train.batch_size


def test_cli_bad_override_exits_2_naming_the_key():
    result = CliRunner().invoke(app, ["params", "-S", "data.nme=mnist"])
    assert result.exit_code == 2
    assert "data.nme" in result.output
    assert "Traceback" not in result.output


def test_cli_missing_params_file_exits_2_naming_it(tmp_path):
    missing = tmp_path / "missing.yaml"
    result = CliRunner().invoke(app, ["params", "-p", str(missing)])
    assert result.exit_code == 2
    assert "missing.yaml" in result.output


# --------------------------------------------------------------------------------------------------
# Strict types, duplicate keys, section-level messages


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.batch_size=true", "expected an integer, got the boolean true"),
        ("vae.beta=false", "expected a number, got the boolean false"),
        ("train.max_minutes=true", "expected a number, got the boolean true"),
        ("data.download=1", "expected true or false, got 1"),
        ("data.channels=true", "expected one of 1, 3, got the boolean true"),
        ("ddpm.channel_mults=[1, true]", "list item True: expected an integer"),
    ],
)
def test_a_boolean_is_not_a_number_nor_a_number_a_boolean(override, expected):
    with pytest.raises(ConfigError) as err:
        load_params(None, [override])
    assert override.split("=")[0] in str(err.value)
    assert expected in str(err.value)


def test_numbers_and_booleans_of_the_right_type_still_validate():
    params = load_params(None, ["train.batch_size=8", "vae.beta=2", "data.download=false", "data.channels=3"])
    assert (params.train.batch_size, params.vae.beta, params.data.download, params.data.channels) == (8, 2.0, False, 3)


def test_a_duplicate_key_in_the_params_file_names_the_key_the_lines_and_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  batch_size: 8\n  log_every: 2\n  batch_size: 16\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    msg = str(err.value)
    assert str(path) in msg and "duplicate key 'batch_size'" in msg and "lines 2 and 4" in msg


def test_a_duplicate_section_is_refused_too(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("vae:\n  beta: 1.0\nvae:\n  beta: 2.0\n")
    with pytest.raises(ConfigError, match="duplicate key 'vae'"):
        load_params(path)


def test_a_section_level_error_names_the_section_and_reason_without_dumping_it():
    with pytest.raises(ConfigError) as err:
        load_params(None, ["ddpm.groups=5"])
    msg = str(err.value)
    assert "ddpm: groups=5 must divide every U-Net width" in msg
    assert "{" not in msg and "channel_mults" not in msg  # the section's dict is not printed


def test_an_unknown_section_is_named_without_its_contents(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("trian:\n  batch_size: 3\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == f"{path}: unknown key 'trian'; check the spelling"


@pytest.mark.parametrize(
    ("key", "named"),
    [("registry.max_fid_over_floor=10", "max_relative_fid"), ("registry.min_coverage=0.5", "min_class_coverage")],
)
def test_a_gate_key_of_an_earlier_release_is_refused_naming_what_replaced_it(key: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named) as info:
        load_params(None, [key])
    assert len(str(info.value).splitlines()) == 1
