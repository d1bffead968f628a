"""Latent diffusion family (Rombach et al. 2022): the DDPM U-Net trained on the latents of a trained VAE.

The VAE (``ldm.vae``, a model folder of ``imagegen train vae``) is declared as a requirement (:data:`SPEC`): the
training stage loads it and hands it to :func:`build`, which never loads a model itself. It is frozen: its encoder
and decoder are copied into the LDM as two more networks (``trainable=False``, in no phase's ``trains``), so the
LDM's model folder is self-contained and samples, evaluates, exports and registers like any other.

Latents: the encoder *mean* (no reparameterisation noise), times ``ldm.scale_factor``: unless given, 1/std of
those means over the training split, computed once when training starts and recorded in the model's spec, so
the diffusion runs on unit-variance data as the noise schedule assumes.

The VAE latent is a dense vector (a Dense layer's output), not a spatial map: its entries have no
neighbourhood. It is laid out as a small square grid only because the U-Net takes images
(:func:`latent_grid`); the convolutions then mix arbitrary groups of latent entries, which works because the
grid is tiny (16 -> 4x4x1), the U-Net's middle attention sees all of it, and every entry stays in place.

Training reuses the DDPM family's loss, noise and EMA on the grid (:func:`imagegen.training.families.ddpm.build`),
fed with the encoded images. Sampling is :func:`imagegen.models.diffusion.ddim_sample` (or ``ddpm_sample``) in
latent space, without x0 clipping (latents are not in [-1, 1]), then the frozen decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from imagegen.config import DDPMConfig, LDMConfig, Params, VAEConfig
from imagegen.errors import ConfigError, DataError
from imagegen.models.vae import build_decoder, build_encoder
from imagegen.sampler_settings import SamplerSettings
from imagegen.training.families import ddpm
from imagegen.training.families.base import Caller, Family, Phase
from imagegen.training.families.spec import FamilySpec, Requirement

ENCODE_BATCH = 512


def latent_grid(latent_dim: int, cfg: DDPMConfig) -> tuple[int, int, int]:
    """The (side, side, channels) grid the U-Net sees for a flat latent of ``latent_dim`` entries.

    Rule: ``side`` is the largest power of two >= 2 with ``side**2`` dividing ``latent_dim`` that the U-Net can
    halve ``len(channel_mults) - 1`` times; ``channels = latent_dim / side**2`` (16 -> 4x4x1, 32 -> 4x4x2,
    64 -> 8x8x1, 8 -> 2x2x2 with a single level). Entries are placed in row-major order (a plain reshape).
    """
    n_down = len(cfg.channel_mults) - 1
    side = 2
    best = 0
    while side * side <= latent_dim:
        if latent_dim % (side * side) == 0 and side % (2**n_down) == 0:
            best = side
        side *= 2
    if not best:
        raise ConfigError(
            f"vae.latent_dim={latent_dim}: the ldm U-Net needs latent_dim = channels * side**2 with side a power of "
            f"two >= 2 divisible by 2**{n_down} (ldm.channel_mults={cfg.channel_mults}); e.g. 16 or 32"
        )
    return best, best, latent_dim // (best * best)


def to_grid(z: Any, grid: Sequence[int]) -> Any:
    """(B, latent_dim) -> (B, *grid)."""
    return ops.reshape(z, (-1, *grid))


def from_grid(x: Any, latent_dim: int) -> Any:
    """(B, *grid) -> (B, latent_dim)."""
    return ops.reshape(x, (-1, latent_dim))


def encode_means(encoder: keras.Model, images: np.ndarray) -> np.ndarray:
    """The encoder means (N, latent_dim) of ``images`` (uint8, any N), in batches."""
    from imagegen.data.loader import to_unit_range

    out = []
    for start in range(0, len(images), ENCODE_BATCH):
        z_mean, _ = encoder(to_unit_range(np.asarray(images[start : start + ENCODE_BATCH])), training=False)
        out.append(np.asarray(ops.convert_to_numpy(z_mean), dtype=np.float64))
    return np.concatenate(out)


def latent_scale(encoder: keras.Model, images: np.ndarray) -> float:
    """1 / std of the encoder means over ``images`` (all entries pooled): scaled latents have unit variance."""
    std = float(np.std(encode_means(encoder, images)))
    if not np.isfinite(std) or std <= 0:
        raise DataError(f"ldm: the VAE's latent means have std {std!r} on the training split; retrain the VAE")
    return 1.0 / std


def _frozen(net: keras.Model) -> keras.Model:
    net.trainable = False
    return net


def build(
    params: Params,
    image_shape: tuple[int, int, int],
    num_classes: int,
    dataset: Any = None,
    trained: Mapping[str, Family] | None = None,
) -> Family:
    """The LDM's networks and phase.

    With ``dataset`` (training): ``trained["vae"]``, the VAE of ``ldm.vae`` loaded by the caller
    (:func:`imagegen.artifact.load_requirements`), is copied in, and the latent scale is computed on the
    dataset's train split unless ``ldm.scale_factor`` is set. Without (rebuilding a saved model): the
    architecture comes from ``params.vae`` and ``ldm.scale_factor`` (both recorded in the model's spec); with no
    scale recorded (a blank LDM, e.g. for a throughput benchmark on random data) the scale is 1.
    """
    cfg = params.ldm
    if getattr(cfg, "captions", False):
        raise ConfigError("ldm.captions=true: caption conditioning is a ddpm feature; the ldm takes class labels only")
    size, _, channels = image_shape
    vae = None
    if dataset is not None:
        if not trained or "vae" not in trained:
            raise ConfigError("ldm: training needs its trained VAE handed in (trained={'vae': ...}); see ldm.vae")
        vae = trained["vae"]
        vae_cfg = VAEConfig(**vae.spec["vae"])
        if cfg.scale_factor is None:
            scale = latent_scale(vae.networks["encoder"], dataset.split("train").images)
            cfg = cfg.model_copy(update={"scale_factor": scale})
    else:
        vae_cfg = params.vae
    scale = scale_of(cfg)
    latent_dim = vae_cfg.latent_dim
    grid = latent_grid(latent_dim, cfg)

    encoder = _frozen(build_encoder(vae_cfg, size, channels))
    decoder = _frozen(build_decoder(vae_cfg, size, channels))
    if vae is not None:
        encoder.set_weights(vae.networks["encoder"].get_weights())
        decoder.set_weights(vae.networks["decoder"].get_weights())

    # The DDPM family on the latent grid: its U-Nets, loss, noise and EMA (one implementation of each).
    unet_cfg = DDPMConfig(**cfg.model_dump(include=set(DDPMConfig.model_fields)))
    inner = ddpm.build(params.model_copy(update={"ddpm": unet_cfg}), grid, num_classes)
    (phase,) = inner.phases

    def loss(call: Caller, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        z_mean, _ = call("encoder", batch["images"], training=False)
        latents = to_grid(ops.cast(z_mean, "float32") * scale, grid)
        return phase.loss(call, {**batch, "images": latents})

    return Family(
        name="ldm",
        networks={**inner.networks, "encoder": encoder, "decoder": decoder},
        phases=[Phase("unet", phase.trains, loss, phase.optimizer)],
        noise=inner.noise,
        ema=inner.ema,
        ema_decay=inner.ema_decay,
        spec={"ldm": cfg.as_spec(), "vae": vae_cfg.as_spec(), "latent_grid": list(grid)},
        batch_separable=inner.batch_separable,  # the DDPM loss on latents of the frozen encoder (inference mode)
    )


def scale_of(cfg: LDMConfig) -> float:
    """The latent scale factor (1 for a blank LDM that was never trained)."""
    return 1.0 if cfg.scale_factor is None else float(cfg.scale_factor)


def decode_latents(family: Family, latents: Any) -> Any:
    """Scaled float32 latents (B, *grid) -> the frozen VAE decoder's output tensor (traceable: the export graph)."""
    cfg = LDMConfig(**family.spec["ldm"])
    z = from_grid(latents, int(family.spec["vae"]["latent_dim"])) / scale_of(cfg)
    return family.networks["decoder"](z, training=False)


def decode(family: Family, latents: Any) -> np.ndarray:
    """Scaled latents (B, *grid) -> float32 images in [-1, 1] through the frozen VAE decoder."""
    out = decode_latents(family, ops.cast(latents, "float32"))
    return np.clip(np.asarray(ops.convert_to_numpy(out), dtype=np.float32), -1.0, 1.0)


def encode(family: Family, images: np.ndarray) -> np.ndarray:
    """Float images in [-1, 1] -> scaled latents (B, *grid), float32: what the U-Net is trained on."""
    cfg = LDMConfig(**family.spec["ldm"])
    z_mean, _ = family.networks["encoder"](images, training=False)
    z = np.asarray(ops.convert_to_numpy(z_mean), dtype=np.float32) * scale_of(cfg)
    return z.reshape(-1, *family.spec["latent_grid"])


def generate(
    family: Family,
    n: int,
    rng: np.random.Generator,
    labels: np.ndarray | None = None,
    *,
    settings: SamplerSettings | None = None,
    predict: Callable[..., Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    x_T: np.ndarray | None = None,
    prompt: Any = None,
) -> np.ndarray:
    """Sample ``n`` images (float32 in [-1, 1]): DDIM/DDPM in latent space, then the VAE decoder.

    The DDPM family's reverse process (:func:`imagegen.training.families.ddpm.denoise`) on the latent grid;
    ``x_T`` is latent noise (n, *latent_grid). ``settings.clip_x0`` is ignored: the predicted x0 is a latent,
    not an image in [-1, 1].
    """
    cfg = LDMConfig(**family.spec["ldm"])
    z0 = ddpm.denoise(
        family, cfg, tuple(family.spec["latent_grid"]), n, rng, labels, settings or SamplerSettings(),
        clip_x0=False, predict=predict, progress=progress, x_T=x_T, prompt=prompt,
    )  # fmt: skip
    return decode(family, z0)


def noise_shape(spec: Mapping[str, Any]) -> tuple[int, ...]:
    """A sample starts from latent noise x_T on the latent grid."""
    return tuple(int(d) for d in spec["latent_grid"])


SPEC = FamilySpec(
    name="ldm",
    config=LDMConfig,
    networks=("unet", "unet_ema", "encoder", "decoder"),
    phases=("unet",),
    build=build,
    generate=generate,
    noise_shape=noise_shape,
    sampling_networks=("unet_ema", "decoder"),
    diffusion=True,
    denoiser=("unet_ema", "unet"),
    batch_separable=True,  # the DDPM loss on latents of the frozen encoder (inference mode)
    needs_dataset=True,  # the latent scale is computed on the training split
    requires=(Requirement(key="vae", family="vae", label="VAE"),),
    decode_latents=decode_latents,
)
