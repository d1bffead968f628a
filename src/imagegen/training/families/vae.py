"""VAE family: loss = reconstruction + beta * KL (free bits per latent dimension: ``vae.free_bits``).

The reconstruction is ``vae.likelihood``'s (see :mod:`imagegen.models.vae`): the Bernoulli one reads the decoder's
pre-tanh logits through the family view ``decoder_logits`` (the decoder's own weights), so it is trained on
logits while every sampler, the LDM and the export keep calling the decoder for images.

Reported: ``loss``, ``reconstruction`` and ``kl``, the true KL per image (not the free-bits term), which the
training stage watches for posterior collapse (:mod:`imagegen.training.collapse`). Samples decode z ~ N(0, I).

Architecture student (:data:`SPEC`): ``base_filters`` scaled; loss: MSE between the decoders' images for the same
z ~ N(0, I), plus MSE between the encoders' means and log-variances on real images.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from imagegen.config import DistillConfig, Params, VAEConfig
from imagegen.models.matching import frozen, mse
from imagegen.models.vae import (
    bernoulli_reconstruction_loss,
    build_decoder,
    build_encoder,
    decoder_logits,
    free_bits_kl,
    kl_per_dim,
    reconstruction_loss,
    reparameterize,
)
from imagegen.training.families.base import Caller, Family, Phase
from imagegen.training.families.spec import FamilySpec


def build(params: Params, image_shape: tuple[int, int, int], num_classes: int) -> Family:
    """The encoder and decoder of ``params.vae`` for images of ``image_shape`` (unconditional)."""
    cfg = params.vae
    size, _, channels = image_shape
    encoder = build_encoder(cfg, size, channels)
    decoder = build_decoder(cfg, size, channels)

    def loss(call: Caller, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        z_mean, z_log_var = call("encoder", batch["images"])
        z = reparameterize(z_mean, z_log_var, batch["eps"])
        if cfg.likelihood == "bernoulli":
            recon = bernoulli_reconstruction_loss(batch["images"], call("decoder_logits", z))
        else:
            recon = reconstruction_loss(batch["images"], call("decoder", z))
        per_dim = kl_per_dim(z_mean, z_log_var)
        kl = keras.ops.sum(per_dim)
        total = recon + cfg.beta * free_bits_kl(per_dim, cfg.free_bits)
        return total, {"loss": total, "reconstruction": recon, "kl": kl}

    def noise(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
        return {"eps": rng.standard_normal((labels.shape[0], cfg.latent_dim), dtype=np.float32)}

    return Family(
        name="vae",
        networks={"encoder": encoder, "decoder": decoder},
        phases=[Phase("vae", ("encoder", "decoder"), loss, keras.optimizers.Adam(cfg.learning_rate))],
        noise=noise,
        spec={"vae": cfg.as_spec()},
        views={"decoder_logits": ("decoder", decoder_logits(decoder))},
    )


def generate(family: Family, n: int, rng: np.random.Generator, **_: Any) -> np.ndarray:
    """Decode ``n`` latents from the prior N(0, I); float32 images in [-1, 1]."""
    cfg = VAEConfig(**family.spec["vae"])
    z = rng.standard_normal((n, cfg.latent_dim), dtype=np.float32)
    out = family.networks["decoder"](z, training=False)
    return np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float32)


def reconstruct(family: Family, images: np.ndarray) -> np.ndarray:
    """Encode to the posterior mean and decode (for SSIM/PSNR of reconstructions)."""
    z_mean, _ = family.networks["encoder"](images, training=False)
    out = family.networks["decoder"](z_mean, training=False)
    return np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float32)


def noise_shape(spec: Mapping[str, Any]) -> tuple[int, ...]:
    """A sample starts from z of ``latent_dim`` entries."""
    return (int(spec["vae"]["latent_dim"]),)


def architecture_student(
    teacher: Family, student: Family, params: Params, cfg: DistillConfig, features: Any
) -> tuple[dict[str, keras.Model], Any, Any, dict[str, str]]:
    """The frozen teacher networks, loss and noise of a narrower VAE (see the module docstring)."""
    latent_dim = params.vae.latent_dim
    nets = {"teacher_encoder": teacher.networks["encoder"], "teacher_decoder": teacher.networks["decoder"]}

    def loss(call: Caller, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        target = frozen(call("teacher_decoder", batch["z"], training=False))
        decoder = mse(call("decoder", batch["z"]), target)
        t_mean, t_log_var = call("teacher_encoder", batch["images"], training=False)
        s_mean, s_log_var = call("encoder", batch["images"])
        encoder = mse(s_mean, frozen(t_mean)) + mse(s_log_var, frozen(t_log_var))
        total = decoder + encoder
        return total, {"loss": total, "decoder_mse": decoder, "encoder_mse": encoder}

    def noise(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
        return {"z": rng.standard_normal((labels.shape[0], latent_dim), dtype=np.float32)}

    return nets, loss, noise, {}


SPEC = FamilySpec(
    name="vae",
    config=VAEConfig,
    networks=("encoder", "decoder"),
    phases=("vae",),
    build=build,
    generate=generate,
    noise_shape=noise_shape,
    sampling_networks=("decoder",),
    reconstruct=reconstruct,
    watches_kl=True,
    cpu_bf16_math=True,  # the transposed and strided convolutions: a faster step in bfloat16 on AMX
    width_key="base_filters",
    student_trains=("encoder", "decoder"),
    architecture_student=architecture_student,
)
