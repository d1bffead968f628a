"""Model families for the training loop: ``build_family(name, params, image_shape, num_classes)``.

Importing this package does not import Keras: the names and :func:`is_diffusion` serve the CLI's argument
checks and error paths, which answer without starting TensorFlow. ``Family`` and ``Phase`` (and every family
module) load Keras when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagegen.training.families.base import Family, Phase

FAMILIES = ("dcgan", "vae", "ddpm", "ldm")
# Families sampled by a diffusion sampler (imagegen.sampling's keywords, the unrolled DDIM export graph).
DIFFUSION_FAMILIES = ("ddpm", "ldm")


def is_diffusion(name: str) -> bool:
    return name in DIFFUSION_FAMILIES


def family_module(name: str) -> Any:
    if name == "dcgan":
        from imagegen.training.families import dcgan as mod
    elif name == "vae":
        from imagegen.training.families import vae as mod
    elif name == "ddpm":
        from imagegen.training.families import ddpm as mod
    elif name == "ldm":
        from imagegen.training.families import ldm as mod
    else:
        raise ValueError(f"unknown model family {name!r}; expected one of {FAMILIES}")
    return mod


def build_family(
    name: str, params: Any, image_shape: tuple[int, int, int], num_classes: int, dataset: Any = None
) -> Family:
    """A new family; ``dataset`` (the processed training data) reaches the families that need it to be built
    (``BUILD_NEEDS_DATASET``: the LDM loads its VAE and scales its latents); the others ignore it."""
    module = family_module(name)
    if dataset is not None and getattr(module, "BUILD_NEEDS_DATASET", False):
        family = module.build(params, image_shape, num_classes, dataset=dataset)
    else:
        family = module.build(params, image_shape, num_classes)
    family.spec.update(family=name, image_shape=list(image_shape), num_classes=int(num_classes))
    return family


def __getattr__(name: str) -> Any:
    """``Family`` and ``Phase``, imported on first use (they need Keras)."""
    if name in ("Family", "Phase"):
        from imagegen.training.families import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DIFFUSION_FAMILIES", "FAMILIES", "Family", "Phase", "build_family", "family_module", "is_diffusion"]
