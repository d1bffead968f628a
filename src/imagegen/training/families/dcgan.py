"""DCGAN family: a discriminator phase then a generator phase per step (non-saturating loss).

Architecture student (:data:`SPEC`): the generator's ``base_filters`` scaled; loss: MSE between the student's and
the teacher's image for the same z (and label), plus ``distill.feature_weight`` times the MSE between their features
from the pipeline's evaluation classifier (penultimate layer) when that model is given, plus (``distill.
discriminator_weight`` > 0) ``T^2 KL`` between the teacher discriminator's softened real/fake outputs on the
teacher's and on the student's image (:func:`imagegen.models.matching.kd_loss` on two-class logits ``[0, l]``,
T = ``distill.temperature``): the teacher's critic judging the student's images as it judges its own. The student
family also has a discriminator, built at the student's size and left untrained (sampling never uses it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from imagegen.config import DCGANConfig, DistillConfig, Params
from imagegen.models.dcgan import (
    build_discriminator,
    build_generator,
    discriminator_loss,
    generator_loss,
)
from imagegen.models.matching import binary_logits, frozen, kd_loss, mse
from imagegen.training.families.base import Caller, Family, Phase
from imagegen.training.families.spec import FamilySpec


def _gen_inputs(cfg: DCGANConfig, z: Any, labels: Any) -> Any:
    return [z, labels] if cfg.conditional else z


def build(params: Params, image_shape: tuple[int, int, int], num_classes: int) -> Family:
    """The generator and discriminator of ``params.dcgan`` for images of ``image_shape``."""
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
        spec={"dcgan": cfg.as_spec()},
    )


def generate(
    family: Family, n: int, rng: np.random.Generator, labels: np.ndarray | None = None, **_: Any
) -> np.ndarray:
    """Decode ``n`` latents from the prior N(0, I); float32 images in [-1, 1]."""
    cfg = DCGANConfig(**family.spec["dcgan"])
    z = rng.standard_normal((n, cfg.latent_dim), dtype=np.float32)
    gen = family.networks["generator"]
    inputs = [z, family.labels_for(labels, n)] if cfg.conditional else z
    return np.asarray(keras.ops.convert_to_numpy(gen(inputs, training=False)), dtype=np.float32)


def noise_shape(spec: Mapping[str, Any]) -> tuple[int, ...]:
    """A sample starts from z of ``latent_dim`` entries."""
    return (int(spec["dcgan"]["latent_dim"]),)


def architecture_student(
    teacher: Family, student: Family, params: Params, cfg: DistillConfig, features: keras.Model | None
) -> tuple[dict[str, keras.Model], Any, Any, dict[str, str]]:
    """The frozen teacher networks, loss and noise of a narrower generator (see the module docstring)."""
    gan_cfg = params.dcgan
    nets = {"teacher_generator": teacher.networks["generator"]}
    use_features = features is not None and cfg.feature_weight > 0
    if use_features:
        nets["features"] = features
    use_critic = cfg.discriminator_weight > 0
    if use_critic:
        nets["teacher_discriminator"] = teacher.networks["discriminator"]

    def gen_inputs(batch: Mapping[str, Any]) -> Any:
        return [batch["z"], batch["labels"]] if gan_cfg.conditional else batch["z"]

    def disc_inputs(image: Any, batch: Mapping[str, Any]) -> Any:
        return [image, batch["labels"]] if gan_cfg.conditional else image

    def loss(call: Caller, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        target = frozen(call("teacher_generator", gen_inputs(batch), training=False))
        image = keras.ops.cast(call("generator", gen_inputs(batch)), "float32")
        pixel = mse(image, target)
        metrics = {"pixel_mse": pixel}
        total = pixel
        if use_features:
            feat = mse(call("features", image, training=False), frozen(call("features", target, training=False)))
            total = pixel + cfg.feature_weight * feat
            metrics["feature_mse"] = feat
        if use_critic:
            t_logit = frozen(call("teacher_discriminator", disc_inputs(target, batch), training=False))
            s_logit = call("teacher_discriminator", disc_inputs(image, batch), training=False)
            critic = kd_loss(binary_logits(t_logit), binary_logits(s_logit), cfg.temperature)
            total = total + cfg.discriminator_weight * critic
            metrics["discriminator_kl"] = critic
        metrics["loss"] = total
        return total, metrics

    def noise(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
        return {"z": rng.standard_normal((labels.shape[0], gan_cfg.latent_dim), dtype=np.float32)}

    return nets, loss, noise, {}


SPEC = FamilySpec(
    name="dcgan",
    config=DCGANConfig,
    networks=("generator", "discriminator"),
    phases=("discriminator", "generator"),
    build=build,
    generate=generate,
    noise_shape=noise_shape,
    sampling_networks=("generator",),
    cpu_bf16_math=True,  # the 4x4 transposed and strided convolutions: a faster step in bfloat16 on AMX
    width_key="base_filters",
    student_trains=("generator",),
    architecture_student=architecture_student,
    student_options=("feature_weight", "discriminator_weight"),
)
