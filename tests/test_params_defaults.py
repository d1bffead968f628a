"""params.yaml and the schema's defaults (src/imagegen/config.py) say the same thing, key by key.

Every knob lives in both places: params.yaml for people and DVC, the pydantic defaults for code that
builds ``Params()`` without a file. This keeps the two from drifting apart.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from imagegen.config import Params, flatten, load_params

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_params_yaml_names_every_key_of_the_schema_and_no_other() -> None:
    written = set(flatten(yaml.safe_load(REPO_PARAMS.read_text())))
    schema = set(flatten(Params().model_dump(mode="json")))
    assert sorted(schema - written) == [], "schema keys missing from params.yaml"
    assert sorted(written - schema) == [], "params.yaml keys the schema does not know"


def test_every_value_in_params_yaml_is_the_schemas_default() -> None:
    from_file = flatten(load_params(REPO_PARAMS).model_dump(mode="json"))
    defaults = flatten(Params().model_dump(mode="json"))
    differing = {k: (from_file[k], defaults[k]) for k in defaults if from_file[k] != defaults[k]}
    assert differing == {}, "key: (params.yaml, schema default)"
