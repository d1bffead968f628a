"""Model families for the training loop: ``build_family(name, params, image_shape, num_classes)``."""

from __future__ import annotations

from typing import Any

from imagegen.training.families.base import Family, Phase

FAMILIES = ("dcgan", "vae", "ddpm")


def family_module(name: str) -> Any:
    if name == "dcgan":
        from imagegen.training.families import dcgan as mod
    elif name == "vae":
        from imagegen.training.families import vae as mod
    elif name == "ddpm":
        from imagegen.training.families import ddpm as mod
    else:
        raise ValueError(f"unknown model family {name!r}; expected one of {FAMILIES}")
    return mod


def build_family(name: str, params: Any, image_shape: tuple[int, int, int], num_classes: int) -> Family:
    family = family_module(name).build(params, image_shape, num_classes)
    family.spec.update(family=name, image_shape=list(image_shape), num_classes=int(num_classes))
    return family


__all__ = ["FAMILIES", "Family", "Phase", "build_family", "family_module"]
