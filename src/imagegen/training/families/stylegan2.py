"""StyleGAN2 family: a discriminator phase then a generator phase per step, with ADA, lazy R1 and style mixing.

Losses: the non-saturating logistic loss; on the discriminator, lazy R1 (``gamma/2 ||grad D(x_real)||^2``) applied
every ``r1_interval`` steps with weight ``r1_interval``. The batch carries the per-image weight (``r1_interval`` or
0), so every step runs the same graph, and a ``cond`` on it computes the input gradient only on the steps that apply
it. Path-length regularisation is not implemented. Style mixing: each fake is drawn from two latents with probability
``style_mixing``, the second taking over from a cutoff layer drawn on the host.

All randomness comes from the host (:func:`build`'s ``noise``): latents, per-pixel noise, mixing masks, the
augmentation draws and the R1 weight. Adaptive augmentation (``augment``): real and generated images are
augmented before the discriminator with probability ``p`` per image and augmentation; after every
``ada_interval`` steps ``p`` moves by ``sign(r_t - ada_target)`` times the images seen over ``ada_kimg`` thousand
(:func:`imagegen.models.stylegan2.ada_update`), where r_t is the mean of ``sign(D(real))`` over those steps. ``p``
lives in the family's ``host_state`` (checkpointed, so a resume continues exactly) and is logged as ``ada_p`` with
``r_t``.

Sampling uses the EMA generator (``generator_ema``) and ``SamplerSettings.truncation``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from imagegen.config import Params, StyleGAN2Config
from imagegen.models.stylegan2 import (
    AUGMENT_KEYS,
    StyleGAN2Generator,
    ada_update,
    augment,
    build_discriminator,
    discriminator_loss,
    draw_augment,
    generator_loss,
    noise_size,
    num_ws,
    r1_penalty,
    value_and_input_gradient,
)
from imagegen.sampler_settings import SamplerSettings
from imagegen.training.families.base import Caller, Family, Phase
from imagegen.training.families.spec import FamilySpec


def make_generator(cfg: StyleGAN2Config, size: int, channels: int, num_classes: int, name: str) -> StyleGAN2Generator:
    """A built generator of ``cfg`` (its weights exist after one call on zeros)."""
    gen = StyleGAN2Generator(
        image_size=size,
        channels=channels,
        latent_dim=cfg.latent_dim,
        w_dim=cfg.w_dim,
        mapping_layers=cfg.mapping_layers,
        mapping_lr_multiplier=cfg.mapping_lr_multiplier,
        base_channels=cfg.base_channels,
        max_channels=cfg.max_channels,
        num_classes=num_classes,
        conditional=cfg.conditional,
        w_avg_beta=cfg.w_avg_decay,
        name=name,
    )
    dummy: dict[str, Any] = {
        "z": np.zeros((1, cfg.latent_dim), np.float32),
        "noise": np.zeros((1, noise_size(size)), np.float32),
    }
    if cfg.conditional:
        dummy["label"] = np.zeros((1,), np.int32)
    gen(dummy, training=False)
    return gen


def draw_mixing(rng: np.random.Generator, n: int, layers: int, prob: float) -> np.ndarray:
    """(n, layers) 0/1: with probability ``prob`` an image's layers from a cutoff in [1, layers) on take the second
    latent's w. Both draws are made for every image, so the stream does not depend on ``prob``."""
    mixed = rng.uniform(size=n) < prob
    cutoff = rng.integers(1, max(2, layers), size=n)
    return ((np.arange(layers)[None, :] >= cutoff[:, None]) & mixed[:, None]).astype(np.float32)


def build(params: Params, image_shape: tuple[int, int, int], num_classes: int) -> Family:
    """The generator, its EMA copy and the discriminator of ``params.stylegan2`` for images of ``image_shape``."""
    cfg = params.stylegan2
    size, _, channels = image_shape
    generator = make_generator(cfg, size, channels, num_classes, "stylegan2_generator")
    generator_ema = make_generator(cfg, size, channels, num_classes, "stylegan2_generator_ema")
    generator_ema.set_weights(generator.get_weights())
    discriminator = build_discriminator(
        size, channels, cfg.base_channels, cfg.max_channels, num_classes, cfg.conditional, cfg.mbstd_group
    )
    layers = num_ws(size)
    per_image_noise = noise_size(size)
    host_state: dict[str, Any] = {"steps_drawn": 0, "ada_p": 0.0, "r_t": 0.0, "sign_sum": 0.0, "sign_steps": 0,
                                  "ada_images": 0}  # fmt: skip

    def disc_inputs(x: Any, labels: Any) -> Any:
        return [x, labels] if cfg.conditional else x

    def fakes(call: Caller, batch: Mapping[str, Any], which: str, training: bool) -> Any:
        inputs = {
            "z": batch[f"z_{which}"],
            "z_mix": batch[f"z_mix_{which}"],
            "mix": batch[f"mix_{which}"],
            "noise": batch[f"noise_{which}"],
        }
        if cfg.conditional:
            inputs["label"] = batch["labels"]
        return call("generator", inputs, training=training)

    def augmented(x: Any, batch: Mapping[str, Any], which: str) -> Any:
        if not cfg.augment:
            return x
        return augment(x, {k: batch[f"aug_{which}_{k}"] for k in AUGMENT_KEYS})

    def d_loss(call: Caller, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        ops = keras.ops
        labels = batch["labels"]
        fake = augmented(fakes(call, batch, "d", training=False), batch, "fake")
        real = augmented(ops.cast(batch["images"], "float32"), batch, "real")
        fake_logits = call("discriminator", disc_inputs(fake, labels))
        weight = ops.cast(batch["r1_weight"], "float32")

        def logits_only() -> tuple[Any, Any]:
            logits = ops.cast(call("discriminator", disc_inputs(real, labels)), "float32")
            return logits, ops.zeros_like(weight)

        def with_r1() -> tuple[Any, Any]:
            logits, grad = value_and_input_gradient(lambda x: call("discriminator", disc_inputs(x, labels)), real)
            return ops.cast(logits, "float32"), r1_penalty(grad)

        if cfg.r1_gamma > 0:  # the gradient is computed only on the steps whose batch weights it
            real_logits, penalty = ops.cond(ops.max(weight) > 0, with_r1, logits_only)
        else:
            real_logits, penalty = logits_only()
        loss = discriminator_loss(real_logits, fake_logits)
        lazy = ops.mean(penalty * weight) * (cfg.r1_gamma / 2.0)
        real_sign = ops.mean(ops.sign(real_logits))
        # r1_penalty: the batch mean of ||grad D(real)||^2 on the steps that apply it, 0 on the others
        return loss + lazy, {"d_loss": loss, "r1_penalty": ops.mean(penalty), "real_sign": real_sign}

    def g_loss(call: Caller, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        fake = augmented(fakes(call, batch, "g", training=True), batch, "gen")
        loss = generator_loss(call("discriminator", disc_inputs(fake, batch["labels"])))
        return loss, {"g_loss": loss}

    def noise(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
        n = labels.shape[0]
        out: dict[str, np.ndarray] = {}
        for which in ("d", "g"):
            out[f"z_{which}"] = rng.standard_normal((n, cfg.latent_dim), dtype=np.float32)
            out[f"z_mix_{which}"] = rng.standard_normal((n, cfg.latent_dim), dtype=np.float32)
            out[f"mix_{which}"] = draw_mixing(rng, n, layers, cfg.style_mixing)
            out[f"noise_{which}"] = rng.standard_normal((n, per_image_noise), dtype=np.float32)
        if cfg.augment:
            for which in ("real", "fake", "gen"):
                drawn = draw_augment(rng, n, size, host_state["ada_p"])
                out.update({f"aug_{which}_{k}": v for k, v in drawn.items()})
            host_state["ada_images"] += n
        lazy = host_state["steps_drawn"] % cfg.r1_interval == 0
        out["r1_weight"] = np.full((n,), float(cfg.r1_interval) if lazy else 0.0, np.float32)
        host_state["steps_drawn"] += 1
        return out

    def adapt(metrics: Mapping[str, Any]) -> dict[str, float]:
        host_state["sign_sum"] += float(np.asarray(metrics["real_sign"]))
        host_state["sign_steps"] += 1
        if host_state["sign_steps"] >= cfg.ada_interval:
            r_t = host_state["sign_sum"] / host_state["sign_steps"]
            host_state["ada_p"] = ada_update(
                host_state["ada_p"], r_t, cfg.ada_target, host_state["ada_images"], cfg.ada_kimg * 1000.0
            )
            host_state.update(r_t=r_t, sign_sum=0.0, sign_steps=0, ada_images=0)
        return {"ada_p": float(host_state["ada_p"]), "r_t": float(host_state["r_t"])}

    def adam() -> keras.optimizers.Optimizer:
        return keras.optimizers.Adam(cfg.learning_rate, beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=1e-8)

    return Family(
        name="stylegan2",
        networks={"generator": generator, "generator_ema": generator_ema, "discriminator": discriminator},
        phases=[
            Phase("discriminator", ("discriminator",), d_loss, adam()),
            Phase("generator", ("generator",), g_loss, adam()),
        ],
        noise=noise,
        ema={"generator_ema": "generator"},
        ema_decay=cfg.ema_decay,
        spec={"stylegan2": cfg.as_spec()},
        host_state=host_state,
        adapt=adapt if cfg.augment else None,
    )


def generate(
    family: Family,
    n: int,
    rng: np.random.Generator,
    labels: np.ndarray | None = None,
    *,
    settings: SamplerSettings | None = None,
    **_: Any,
) -> np.ndarray:
    """``n`` images of the EMA generator from z ~ N(0, I) and per-pixel noise (drawn in that order from ``rng``),
    with w truncated towards its mean by ``settings.truncation``; float32 images in [-1, 1]."""
    cfg = StyleGAN2Config(**family.spec["stylegan2"])
    size = int(family.spec["image_shape"][0])
    inputs: dict[str, Any] = {
        "z": rng.standard_normal((n, cfg.latent_dim), dtype=np.float32),
        "noise": rng.standard_normal((n, noise_size(size)), dtype=np.float32),
    }
    truncation = 1.0 if settings is None else float(settings.truncation)
    if truncation != 1.0:
        inputs["truncation"] = np.full((n,), truncation, np.float32)
    if cfg.conditional:
        inputs["label"] = family.labels_for(labels, n)
    gen = family.networks["generator_ema"]
    return np.asarray(keras.ops.convert_to_numpy(gen(inputs, training=False)), dtype=np.float32)


def noise_shape(spec: Mapping[str, Any]) -> tuple[int, ...]:
    """A sample starts from z of ``latent_dim`` entries (plus the per-pixel noise: :func:`extra_inputs`)."""
    return (int(spec["stylegan2"]["latent_dim"]),)


def extra_inputs(spec: Mapping[str, Any]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The flat per-pixel noise of every synthesis layer, one standard normal vector per image."""
    return (("noise", (noise_size(int(spec["image_shape"][0])),)),)


SPEC = FamilySpec(
    name="stylegan2",
    config=StyleGAN2Config,
    networks=("generator", "generator_ema", "discriminator"),
    phases=("discriminator", "generator"),
    build=build,
    generate=generate,
    noise_shape=noise_shape,
    sampling_networks=("generator_ema",),
    extra_inputs=extra_inputs,
    cpu_bf16_math=True,  # the modulated convolutions: a faster step in bfloat16 on AMX
)
