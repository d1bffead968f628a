"""A model family is one module that declares everything about itself (its ``SPEC``), and nothing else asks its name.

The source checks read the code as text: no module outside ``imagegen/training/families/`` and ``config.py``
compares against a family name, the family modules import nothing above them (no model loading: a family that needs
a trained model gets it handed in), and no package imports one above it. The rest builds each family and checks it
against its declaration, and asks the declarations which distillation methods they take.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from imagegen.config import DDPMConfig, LDMConfig, Params
from imagegen.training.families import FAMILIES, build_family, family_spec

SRC = Path(__file__).resolve().parents[1] / "src" / "imagegen"
FAMILIES_DIR = SRC / "training" / "families"
FAMILY_NAME_COMPARISON = re.compile(r"(== |!= |in \(|in \[)[\"'](dcgan|vae|ddpm|ldm|stylegan2)[\"']")
# Packages a module may not import, by the package it lives in: each layer imports only the ones below it.
ABOVE = {
    "training/families": ("imagegen.artifact", "imagegen.distill", "imagegen.stages", "imagegen.sampling",
                          "imagegen.evaluation", "imagegen.export", "imagegen.registry", "imagegen.cli"),
    "models": ("imagegen.training", "imagegen.artifact", "imagegen.distill", "imagegen.stages", "imagegen.sampling",
               "imagegen.evaluation", "imagegen.export"),
    "evaluation": ("imagegen.distill", "imagegen.stages", "imagegen.export", "imagegen.registry"),
}  # fmt: skip


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_module_outside_the_family_modules_and_config_compares_against_a_family_name() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.is_relative_to(FAMILIES_DIR) or path == SRC / "config.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if FAMILY_NAME_COMPARISON.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_no_module_imports_a_package_above_its_own(package: str) -> None:
    offenders = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in sorted((SRC / package).rglob("*.py"))
        for name in sorted(imported_modules(path))
        if name.startswith(ABOVE[package])
    ]
    assert not offenders, "\n".join(offenders)


def test_every_family_module_declares_a_spec_named_as_the_module() -> None:
    assert {path.stem for path in FAMILIES_DIR.glob("*.py")} - {"__init__", "base", "spec"} == set(FAMILIES)
    for name in FAMILIES:
        spec = family_spec(name)
        assert spec.name == name and spec.config is type(getattr(Params(), name))
        assert set(spec.sampling_networks) <= set(spec.networks)
        assert set(spec.student_trains) <= set(spec.networks)
        assert (spec.width_key is None) == (spec.architecture_student is None)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_built_family_has_exactly_the_networks_and_phases_it_declares(name: str) -> None:
    spec = family_spec(name)
    family = build_family(name, Params(), (8, 8, 1), 10)
    assert sorted(family.networks) == sorted(spec.networks)
    assert [phase.name for phase in family.phases] == list(spec.phases)
    assert family.batch_separable == spec.batch_separable
    assert len(spec.noise_shape(family.spec)) >= 1


def test_only_families_that_need_data_or_trained_models_say_so() -> None:
    assert [name for name in FAMILIES if family_spec(name).requires] == ["ldm"]
    (vae,) = family_spec("ldm").requires
    assert (vae.key, vae.family) == ("vae", "vae") and "vae" in LDMConfig.model_fields


@pytest.mark.parametrize(
    ("name", "section", "method", "refused_because"),
    [
        ("ddpm", DDPMConfig(), "progressive", None),
        ("ddpm", DDPMConfig(conditional=True), "progressive", None),
        ("ddpm", DDPMConfig(captions=True), "progressive", "caption-conditioned"),
        ("ddpm", DDPMConfig(captions=True), "architecture", None),
        ("dcgan", None, "progressive", "needs a diffusion"),
        ("vae", None, "architecture", None),
        ("ldm", LDMConfig(), "progressive", "needs a diffusion"),
        ("ldm", LDMConfig(), "architecture", "declares no width"),
        ("stylegan2", None, "progressive", "needs a diffusion"),
        ("stylegan2", None, "architecture", "declares no width"),
    ],
)
def test_each_family_declares_which_distillation_methods_it_takes(name, section, method, refused_because) -> None:
    values = section.model_dump(mode="json") if section is not None else {}
    refusal = family_spec(name).refusal(method, "models/x", values)
    if refused_because is None:
        assert refusal is None
    else:
        assert refusal is not None and refused_because in refusal and "models/x" in refusal
        assert "\n" not in refusal
