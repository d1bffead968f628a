"""DDPM family: epsilon prediction with the simple MSE loss (Ho et al. 2020, Algorithm 1), EMA weights.

Timesteps, noise and (when conditional) label dropout for classifier-free guidance are drawn on the host.
Samples come from the EMA network with DDPM ancestral or DDIM sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from imagegen.config import DDPMConfig, Params
from imagegen.models.diffusion import (
    ddim_sample,
    ddpm_sample,
    predictor_eps_fn,
    q_sample,
    schedule_from_config,
)
from imagegen.models.unet import build_unet
from imagegen.training.families.base import Caller, Family, Phase


def drop_labels(rng: np.random.Generator, labels: np.ndarray, rate: float, null_label: int) -> np.ndarray:
    """Labels with a share ``rate`` replaced by ``null_label`` (label dropout for classifier-free guidance)."""
    drop = rng.random(labels.shape[0]) < rate
    return np.where(drop, null_label, labels).astype(np.int32)


def build(params: Params, image_shape: tuple[int, int, int], num_classes: int) -> Family:
    cfg = params.ddpm
    size, _, channels = image_shape
    unet = build_unet(cfg, size, channels, num_classes)
    unet_ema = build_unet(cfg, size, channels, num_classes)
    unet_ema.set_weights(unet.get_weights())
    schedule = schedule_from_config(cfg)

    def loss(call: Caller, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        x_t = q_sample(schedule, batch["images"], batch["t"], batch["eps"])
        t = ops.cast(batch["t"], "float32")
        inputs = [x_t, t, batch["cond_labels"]] if cfg.conditional else [x_t, t]
        pred = ops.cast(call("unet", inputs), "float32")
        mse = ops.mean(ops.square(pred - batch["eps"]))
        return mse, {"loss": mse}

    def noise(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
        n = labels.shape[0]
        out = {
            "t": rng.integers(0, cfg.timesteps, size=n, dtype=np.int32),
            "eps": rng.standard_normal((n, *image_shape), dtype=np.float32),
        }
        if cfg.conditional:
            out["cond_labels"] = drop_labels(rng, labels, cfg.label_dropout, num_classes)
        return out

    optimizer = keras.optimizers.Adam(cfg.learning_rate, global_clipnorm=1.0)
    return Family(
        name="ddpm",
        networks={"unet": unet, "unet_ema": unet_ema},
        phases=[Phase("unet", ("unet",), loss, optimizer)],
        noise=noise,
        ema={"unet_ema": "unet"},
        ema_decay=cfg.ema_decay,
        spec={"ddpm": cfg.model_dump(mode="json")},
    )


def generate(
    family: Family,
    n: int,
    rng: np.random.Generator,
    labels: np.ndarray | None = None,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    clip_x0: bool = True,
    use_ema: bool = True,
    predict: Callable[..., Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    x_T: np.ndarray | None = None,
    timesteps: Sequence[int] | None = None,
) -> np.ndarray:
    """Sample ``n`` images (float32 in [-1, 1], clipped) with DDIM (``steps``, ``eta``) or DDPM (all T).

    ``timesteps`` is an explicit descending DDIM grid (e.g. a distilled student's own, from its model.json
    ``sampling``); it overrides ``steps``. DDPM ancestral sampling ignores it.
    """
    cfg = DDPMConfig(**family.spec["ddpm"])
    schedule = schedule_from_config(cfg)
    model = family.networks["unet_ema" if use_ema else "unet"]
    if predict is None:
        from imagegen.training.predict import compiled_predictor

        predict = compiled_predictor(model)
    num_classes = family.spec["num_classes"]
    shape = (n, *family.spec["image_shape"])

    if cfg.conditional:
        labels = (np.arange(n) % num_classes) if labels is None else np.asarray(labels)
        eps_fn = predictor_eps_fn(predict, labels, num_classes, guidance_scale)
    else:
        eps_fn = predictor_eps_fn(predict)

    common = {"progress": progress, "clip_x0": clip_x0, "x_T": x_T}
    if sampler == "ddpm":
        x0 = ddpm_sample(eps_fn, schedule, shape, rng, **common)
    elif sampler == "ddim":
        x0 = ddim_sample(eps_fn, schedule, shape, rng, steps=steps, eta=eta, timesteps=timesteps, **common)
    else:
        raise ValueError(f"unknown sampler {sampler!r}; expected 'ddpm' or 'ddim'")
    return np.clip(np.asarray(ops.convert_to_numpy(x0), dtype=np.float32), -1.0, 1.0)
