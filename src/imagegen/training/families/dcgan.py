"""DCGAN family: a discriminator phase then a generator phase per step (non-saturating loss)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from imagegen.config import DCGANConfig, Params
from imagegen.models.dcgan import (
    build_discriminator,
    build_generator,
    discriminator_loss,
    generator_loss,
)
from imagegen.training.families.base import Caller, Family, Phase


def _gen_inputs(cfg: DCGANConfig, z: Any, labels: Any) -> Any:
    return [z, labels] if cfg.conditional else z


def build(params: Params, image_shape: tuple[int, int, int], num_classes: int) -> Family:
    cfg = params.dcgan
    size, _, channels = image_shape
    generator = build_generator(cfg, size, channels, num_classes)
    discriminator = build_discriminator(cfg, size, channels, num_classes)

    def disc_inputs(x: Any, labels: Any) -> Any:
        return [x, labels] if cfg.conditional else x

    def d_loss(call: Caller, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        fake = call("generator", _gen_inputs(cfg, batch["z_d"], batch["labels"]))
        real_logits = call("discriminator", disc_inputs(batch["images"], batch["labels"]))
        fake_logits = call("discriminator", disc_inputs(fake, batch["labels"]))
        loss = discriminator_loss(real_logits, fake_logits)
        return loss, {"d_loss": loss}

    def g_loss(call: Caller, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        fake = call("generator", _gen_inputs(cfg, batch["z_g"], batch["labels"]))
        fake_logits = call("discriminator", disc_inputs(fake, batch["labels"]))
        loss = generator_loss(fake_logits)
        return loss, {"g_loss": loss}

    def noise(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
        n = labels.shape[0]
        return {
            "z_d": rng.standard_normal((n, cfg.latent_dim), dtype=np.float32),
            "z_g": rng.standard_normal((n, cfg.latent_dim), dtype=np.float32),
        }

    def adam() -> keras.optimizers.Optimizer:
        return keras.optimizers.Adam(cfg.learning_rate, beta_1=cfg.beta_1)

    return Family(
        name="dcgan",
        networks={"generator": generator, "discriminator": discriminator},
        phases=[
            Phase("discriminator", ("discriminator",), d_loss, adam()),
            Phase("generator", ("generator",), g_loss, adam()),
        ],
        noise=noise,
        spec={"dcgan": cfg.model_dump(mode="json")},
    )


def generate(
    family: Family, n: int, rng: np.random.Generator, labels: np.ndarray | None = None, **_: Any
) -> np.ndarray:
    """Decode ``n`` latents from the prior N(0, I); float32 images in [-1, 1]."""
    cfg = DCGANConfig(**family.spec["dcgan"])
    z = rng.standard_normal((n, cfg.latent_dim), dtype=np.float32)
    gen = family.networks["generator"]
    inputs = [z, _labels_or_cycle(labels, n, family)] if cfg.conditional else z
    return np.asarray(keras.ops.convert_to_numpy(gen(inputs, training=False)), dtype=np.float32)


def _labels_or_cycle(labels: np.ndarray | None, n: int, family: Family) -> np.ndarray:
    if labels is not None:
        return np.asarray(labels, dtype=np.int32)
    return (np.arange(n) % family.spec["num_classes"]).astype(np.int32)
