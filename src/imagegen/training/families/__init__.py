"""Model families for the training loop: ``build_family(name, params, image_shape, num_classes)``.

Each family is one module here declaring everything about itself in its ``SPEC``
(:class:`~imagegen.training.families.spec.FamilySpec`); :func:`family_spec` finds it by name, and code outside
this package asks the declaration instead of comparing names.

Importing this package does not import Keras: :data:`FAMILIES` serves the CLI's argument checks, which answer
without starting TensorFlow. :func:`family_spec`, ``Family`` and ``Phase`` load Keras (and the family module)
when first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagegen.training.families.base import Family, Phase
    from imagegen.training.families.spec import FamilySpec

FAMILIES = ("dcgan", "vae", "ddpm", "ldm", "stylegan2")


def family_module(name: str) -> Any:
    """The module of family ``name``; a ValueError for an unknown name."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; expected one of {FAMILIES}")
    return importlib.import_module(f"{__name__}.{name}")


def family_spec(name: str) -> FamilySpec:
    """The declaration of family ``name`` (its module's ``SPEC``); a ValueError for an unknown name."""
    return family_module(name).SPEC


def is_diffusion(name: str) -> bool:
    """Whether family ``name`` is sampled by a diffusion sampler."""
    return family_spec(name).diffusion


def build_family(
    name: str,
    params: Any,
    image_shape: tuple[int, int, int],
    num_classes: int,
    dataset: Any = None,
    trained: Mapping[str, Family] | None = None,
) -> Family:
    """A new family. ``dataset`` (the processed training data) reaches the families that declare
    ``needs_dataset`` (a caption model's vocabulary, the LDM's latent scale); ``trained`` (the models of the
    family's ``requires``, loaded by the caller: :func:`imagegen.artifact.load_requirements`) those that declare
    requirements. The others ignore both."""
    spec = family_spec(name)
    extras: dict[str, Any] = {}
    if dataset is not None and spec.needs_dataset:
        extras["dataset"] = dataset
    if trained is not None and spec.requires:
        extras["trained"] = trained
    family = spec.build(params, image_shape, num_classes, **extras)
    family.spec.update(family=name, image_shape=list(image_shape), num_classes=int(num_classes))
    return family


def __getattr__(name: str) -> Any:
    """``Family`` and ``Phase``, imported on first use (they need Keras)."""
    if name in ("Family", "Phase"):
        from imagegen.training.families import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FAMILIES", "Family", "Phase", "build_family", "family_module", "family_spec", "is_diffusion"]
