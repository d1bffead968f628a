"""Architecture distillation: a narrower student trained to reproduce the teacher's outputs on the same inputs.

The student has the teacher's architecture with ``distill.width_factor`` of its width (parameters fall roughly
with the square of the width):

* DDPM: ``base_channels`` scaled and rounded to a multiple of ``groups`` (GroupNorm must divide every width);
  loss: MSE between the student's and the teacher's eps on q_sample(x0, t, eps) of real images at random t.
* DCGAN: the generator's ``base_filters`` scaled; loss: MSE between the student's and the teacher's image for
  the same z (and label), plus ``distill.feature_weight`` times the MSE between their features from the
  pipeline's evaluation classifier (penultimate layer) when that model is given, plus (``distill.
  discriminator_weight`` > 0) ``T^2 KL`` between the teacher discriminator's softened real/fake outputs on the
  teacher's and on the student's image (:func:`imagegen.distill.knowledge.kd_loss` on two-class logits ``[0, l]``,
  T = ``distill.temperature``): the teacher's critic judging the student's images as it judges its own. The family
  also needs a discriminator: one is built at the student's size and left untrained (sampling never uses it).
* VAE: ``base_filters`` scaled; loss: MSE between the decoders' images for the same z ~ N(0, I), plus MSE
  between the encoders' means and log-variances on real images.

The student is built from scratch (its shapes differ from the teacher's) as a normal model family, so it is
saved, sampled and evaluated like any trained model. Teachers are called in inference mode (BatchNorm moving
statistics, no dropout), as when they sample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from imagegen.config import DistillConfig
from imagegen.distill.knowledge import binary_logits, kd_loss
from imagegen.distill.setup import Distillation, family_params, frozen, student_width
from imagegen.errors import ConfigError
from imagegen.models.diffusion import q_sample, schedule_from_config
from imagegen.training.families import FAMILIES, build_family
from imagegen.training.families.base import Caller, Family, Phase

METHOD = "architecture"
WIDTH_KEYS = {"ddpm": "base_channels", "dcgan": "base_filters", "vae": "base_filters"}


def student_spec(spec: Mapping[str, Any], width_factor: float) -> dict[str, Any]:
    """The family section of the student: the teacher's (``spec[family]``) with the width scaled."""
    name = spec.get("family")
    if name not in FAMILIES:
        raise ConfigError(f"architecture distillation: unknown model family {name!r}; expected one of {FAMILIES}")
    section = dict(spec[name])
    key = WIDTH_KEYS[name]
    multiple = int(section["groups"]) if name == "ddpm" else 1
    section[key] = student_width(int(section[key]), width_factor, multiple)
    return section


def _mse(a: Any, b: Any) -> Any:
    return ops.mean(ops.square(ops.cast(a, "float32") - ops.cast(b, "float32")))


def build_architecture(
    teacher: Family,
    cfg: DistillConfig,
    features: keras.Model | None = None,
    name: str = "architecture",
) -> Distillation:
    """A student of ``cfg.width_factor`` times ``teacher``'s width and the family that trains it to match.

    ``teacher`` is the loaded teacher family (its spec says what it is); ``features`` (DCGAN only, optional) maps
    images in [-1, 1] to the evaluation features used by the feature-matching term.
    """
    spec = teacher.spec
    family_name = spec.get("family")
    section = student_spec(spec, cfg.width_factor)
    params = family_params({**spec, family_name: section})
    image_shape = tuple(spec["image_shape"])
    num_classes = int(spec["num_classes"])
    student = build_family(family_name, params, image_shape, num_classes)
    builder: Callable[..., tuple[dict[str, keras.Model], Any, Any, dict[str, str]]] = {
        "ddpm": _ddpm,
        "dcgan": _dcgan,
        "vae": _vae,
    }[family_name]
    teachers, loss, noise, ema = builder(teacher, student, params, cfg, features)
    family = Family(
        name=name,
        networks={**teachers, **student.networks},
        phases=[
            Phase(
                "student",
                tuple(_trained(family_name)),
                loss,
                keras.optimizers.Adam(cfg.architecture_learning_rate, global_clipnorm=1.0),
            )
        ],
        noise=noise,
        ema=ema,
        ema_decay=cfg.ema_decay,
        spec={
            **student.spec,
            "distill": {
                "method": METHOD,
                "width_factor": cfg.width_factor,
                "feature_weight": cfg.feature_weight,
                "feature_matching": features is not None,
                "discriminator_weight": cfg.discriminator_weight if family_name == "dcgan" else 0.0,
            },
        },
    )
    return Distillation(family=family, student=student)


def _trained(family_name: str) -> tuple[str, ...]:
    return {"ddpm": ("unet",), "dcgan": ("generator",), "vae": ("encoder", "decoder")}[family_name]


def _ddpm(teacher: Family, student: Family, params: Any, cfg: DistillConfig, features: Any) -> tuple:
    ddpm_cfg = params.ddpm
    schedule = schedule_from_config(ddpm_cfg)

    def inputs(x: Any, t: Any, batch: Mapping[str, Any]) -> Any:
        return [x, t, batch["cond_labels"]] if ddpm_cfg.conditional else [x, t]

    def loss(call: Caller, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        x_t = q_sample(schedule, batch["images"], batch["t"], batch["eps"])
        t = ops.cast(batch["t"], "float32")
        target = frozen(call("teacher", inputs(x_t, t, batch), training=False))
        mse = _mse(call("unet", inputs(x_t, t, batch)), target)
        return mse, {"loss": mse}

    # Timesteps, noise and label dropout: the same draws as training the student from data.
    return {"teacher": teacher.networks["unet_ema"]}, loss, student.noise, {"unet_ema": "unet"}


def _dcgan(teacher: Family, student: Family, params: Any, cfg: DistillConfig, features: Any) -> tuple:
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
        image = ops.cast(call("generator", gen_inputs(batch)), "float32")
        pixel = _mse(image, target)
        metrics = {"pixel_mse": pixel}
        total = pixel
        if use_features:
            feat = _mse(call("features", image, training=False), frozen(call("features", target, training=False)))
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


def _vae(teacher: Family, student: Family, params: Any, cfg: DistillConfig, features: Any) -> tuple:
    latent_dim = params.vae.latent_dim
    nets = {"teacher_encoder": teacher.networks["encoder"], "teacher_decoder": teacher.networks["decoder"]}

    def loss(call: Caller, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        target = frozen(call("teacher_decoder", batch["z"], training=False))
        decoder = _mse(call("decoder", batch["z"]), target)
        t_mean, t_log_var = call("teacher_encoder", batch["images"], training=False)
        s_mean, s_log_var = call("encoder", batch["images"])
        encoder = _mse(s_mean, frozen(t_mean)) + _mse(s_log_var, frozen(t_log_var))
        total = decoder + encoder
        return total, {"loss": total, "decoder_mse": decoder, "encoder_mse": encoder}

    def noise(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
        return {"z": rng.standard_normal((labels.shape[0], latent_dim), dtype=np.float32)}

    return nets, loss, noise, {}
