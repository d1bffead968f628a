"""VAE family: loss = reconstruction + beta * KL (free bits per latent dimension: ``vae.free_bits``).

Reported: ``loss``, ``reconstruction`` and ``kl``, the true KL per image (not the free-bits term), which the
training stage watches for posterior collapse (:mod:`imagegen.training.collapse`). Samples decode z ~ N(0, I).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from imagegen.config import Params, VAEConfig
from imagegen.models.vae import (
    build_decoder,
    build_encoder,
    free_bits_kl,
    kl_per_dim,
    reconstruction_loss,
    reparameterize,
)
from imagegen.training.families.base import Caller, Family, Phase


def build(params: Params, image_shape: tuple[int, int, int], num_classes: int) -> Family:
    cfg = params.vae
    size, _, channels = image_shape
    encoder = build_encoder(cfg, size, channels)
    decoder = build_decoder(cfg, size, channels)

    def loss(call: Caller, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        z_mean, z_log_var = call("encoder", batch["images"])
        z = reparameterize(z_mean, z_log_var, batch["eps"])
        x_hat = call("decoder", z)
        recon = reconstruction_loss(batch["images"], x_hat)
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
        spec={"vae": cfg.model_dump(mode="json")},
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
