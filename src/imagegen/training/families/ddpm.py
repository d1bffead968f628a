"""DDPM family: epsilon prediction with the simple MSE loss (Ho et al. 2020, Algorithm 1), EMA weights.

Timesteps, noise and (when conditional) label dropout for classifier-free guidance are drawn on the host.
Samples come from the EMA network with DDPM ancestral or DDIM sampling.

Caption models (``ddpm.captions``): the U-Net takes token ids (its text encoder trains with it, in the same
phase, and is averaged into the EMA copy). The batches carry the dataset's token ids (``captions``); a share
``caption_dropout`` of them is replaced by the null caption (all ``<pad>``) on the host for classifier-free
guidance. The vocabulary comes from the processed dataset at train time and is stored in the spec, so a
loaded model tokenizes prompts (``generate(prompt=...)``) as its training data were.

Architecture student (:data:`SPEC`): ``base_channels`` scaled and rounded to a multiple of ``groups`` (GroupNorm must
divide every width); loss: MSE between the student's and the teacher's eps on q_sample(x0, t, eps) of real images at
random t. Progressive distillation (:mod:`imagegen.distill.progressive`) takes unconditional and class-conditioned
models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from imagegen.config import DDPMConfig, DistillConfig, Params
from imagegen.errors import ConfigError
from imagegen.models.diffusion import predictor_eps_fn, q_sample, run_sampler, schedule_from_config
from imagegen.models.matching import frozen, mse
from imagegen.models.text import ENCODER_NAME, PAD_ID, load_text_encoder_weights, tokenizer_for
from imagegen.models.unet import build_unet
from imagegen.sampler_settings import SamplerSettings
from imagegen.training.families.base import Caller, Family, Phase
from imagegen.training.families.spec import FamilySpec


def drop_labels(rng: np.random.Generator, labels: np.ndarray, rate: float, null_label: int) -> np.ndarray:
    """Labels with a share ``rate`` replaced by ``null_label`` (label dropout for classifier-free guidance)."""
    drop = rng.random(labels.shape[0]) < rate
    return np.where(drop, null_label, labels).astype(np.int32)


def with_dataset_vocabulary(cfg: DDPMConfig, dataset: Any) -> DDPMConfig:
    """``cfg`` with ``text_vocabulary`` set from the processed dataset's captions (a ConfigError without any)."""
    captions = getattr(dataset, "captions", None)
    if captions is None:
        raise ConfigError(
            f"ddpm.captions=true: the dataset {dataset.path} has no captions; ingest it with "
            "data.caption_template (e.g. 'a photo of a {class}') or a captions.csv in the image folder"
        )
    vocabulary = list(captions["vocabulary"])
    if cfg.text_vocabulary and list(cfg.text_vocabulary) != vocabulary:
        raise ConfigError(
            f"ddpm.text_vocabulary: given {len(cfg.text_vocabulary)} words, but the dataset {dataset.path} was "
            f"tokenized with its own {len(vocabulary)}; leave ddpm.text_vocabulary empty"
        )
    return cfg.model_copy(update={"text_vocabulary": vocabulary})


def fit_tokens(tokens: Any, length: int) -> Any:
    """Token ids (B, L) cut or padded (with ``<pad>``) to (B, length)."""
    width = tokens.shape[1]
    if width > length:
        return tokens[:, :length]
    if width < length:
        return ops.pad(tokens, [[0, 0], [0, length - width]], constant_values=PAD_ID)
    return tokens


def build(params: Params, image_shape: tuple[int, int, int], num_classes: int, dataset: Any = None) -> Family:
    """The U-Net (and its EMA copy) of ``params.ddpm``; ``dataset`` gives a caption model its vocabulary."""
    cfg = params.ddpm
    if cfg.captions and dataset is not None:
        cfg = with_dataset_vocabulary(cfg, dataset)
    size, _, channels = image_shape
    unet = build_unet(cfg, size, channels, num_classes)
    if cfg.captions and dataset is not None and cfg.text_encoder_weights is not None:
        load_text_encoder_weights(unet.get_layer(ENCODER_NAME), cfg.text_encoder_weights)
    unet_ema = build_unet(cfg, size, channels, num_classes)
    unet_ema.set_weights(unet.get_weights())
    schedule = schedule_from_config(cfg)

    def loss(call: Caller, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        x_t = q_sample(schedule, batch["images"], batch["t"], batch["eps"])
        t = ops.cast(batch["t"], "float32")
        inputs = [x_t, t, batch["cond_labels"]] if cfg.conditional else [x_t, t]
        if cfg.captions:  # caption dropout: the kept captions, else all <pad> (PAD_ID = 0)
            tokens = fit_tokens(ops.cast(batch["captions"], "int32"), cfg.text_max_length)
            inputs.append(tokens * ops.expand_dims(ops.cast(batch["caption_keep"], "int32"), -1))
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
        if cfg.captions:
            out["caption_keep"] = (rng.random(n) >= cfg.caption_dropout).astype(np.int32)
        return out

    optimizer = keras.optimizers.Adam(cfg.learning_rate, global_clipnorm=1.0)
    return Family(
        name="ddpm",
        networks={"unet": unet, "unet_ema": unet_ema},
        phases=[Phase("unet", ("unet",), loss, optimizer)],
        noise=noise,
        ema={"unet_ema": "unet"},
        ema_decay=cfg.ema_decay,
        spec={"ddpm": cfg.as_spec()},
        batch_separable=SPEC.batch_separable,
    )


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
    prompt: str | Sequence[str] | None = None,
) -> np.ndarray:
    """Sample ``n`` images (float32 in [-1, 1], clipped) with DDIM or DDPM as ``settings`` say (see :func:`denoise`)."""
    settings = settings or SamplerSettings()
    cfg = DDPMConfig(**family.spec["ddpm"])
    shape = tuple(family.spec["image_shape"])
    x0 = denoise(
        family, cfg, shape, n, rng, labels, settings, clip_x0=settings.clip_x0, predict=predict, progress=progress,
        x_T=x_T, prompt=prompt,
    )  # fmt: skip
    return np.clip(np.asarray(ops.convert_to_numpy(x0), dtype=np.float32), -1.0, 1.0)


def denoise(
    family: Family,
    cfg: DDPMConfig,
    shape: tuple[int, ...],
    n: int,
    rng: np.random.Generator,
    labels: np.ndarray | None,
    settings: SamplerSettings,
    *,
    clip_x0: bool,
    predict: Callable[..., Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    x_T: np.ndarray | None = None,
    prompt: str | Sequence[str] | None = None,
) -> Any:
    """x0 (n, *shape) of the reverse process of ``family``'s EMA U-Net, in pixel or latent space.

    DDIM (``settings.steps``, ``settings.eta``, or an explicit descending grid ``settings.timesteps``, e.g. a
    distilled student's own) or DDPM ancestral sampling over all T (which ignores the grid); classifier-free
    guidance at ``settings.guidance_scale`` for a class- or caption-conditioned U-Net; ``clip_x0`` clips each
    predicted x0 to [-1, 1] (images, not latents). ``labels`` default to cycling over the classes. ``prompt``
    (caption models only): one caption for every image or one per image; None draws with the null caption
    (unconditional). Words the model's vocabulary lacks are read as ``<unk>``, with one warning.
    """
    schedule = schedule_from_config(cfg)
    if predict is None:
        from imagegen.training.predict import compiled_predictor

        predict = compiled_predictor(family.networks["unet_ema"])
    num_classes = family.spec["num_classes"]
    captions = bool(getattr(cfg, "captions", False))
    if prompt is not None and not captions:
        raise ConfigError(f"a prompt was given, but this {family.name} model is not caption-conditioned")
    if cfg.conditional:
        labels = (np.arange(n) % num_classes) if labels is None else np.asarray(labels)
        eps_fn = predictor_eps_fn(predict, labels, num_classes, settings.guidance_scale)
    elif captions:
        eps_fn = predictor_eps_fn(predict, caption_tokens(cfg, prompt, n), PAD_ID, settings.guidance_scale)
    else:
        eps_fn = predictor_eps_fn(predict)
    return run_sampler(
        eps_fn, schedule, (n, *shape), rng, settings.sampler, steps=settings.steps, eta=settings.eta,
        timesteps=settings.timesteps, progress=progress, clip_x0=clip_x0, x_T=x_T,
    )  # fmt: skip


def caption_tokens(cfg: DDPMConfig, prompt: str | Sequence[str] | None, n: int) -> np.ndarray:
    """Token ids (n, text_max_length) for ``prompt`` (one or one per image); None: the null caption."""
    if prompt is None:
        return np.full((n, cfg.text_max_length), PAD_ID, dtype=np.int32)
    prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} images; give one prompt or one per image")
    return tokenizer_for(cfg).encode(prompts, warn_unknown=True)


def noise_shape(spec: Mapping[str, Any]) -> tuple[int, ...]:
    """A sample starts from image-shaped x_T."""
    return tuple(int(d) for d in spec["image_shape"])


def architecture_student(
    teacher: Family, student: Family, params: Params, cfg: DistillConfig, features: Any
) -> tuple[dict[str, keras.Model], Any, Any, dict[str, str]]:
    """The frozen teacher U-Net, loss and noise of a narrower U-Net (see the module docstring)."""
    ddpm_cfg = params.ddpm
    schedule = schedule_from_config(ddpm_cfg)

    def inputs(x: Any, t: Any, batch: Mapping[str, Any]) -> Any:
        return [x, t, batch["cond_labels"]] if ddpm_cfg.conditional else [x, t]

    def loss(call: Caller, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        x_t = q_sample(schedule, batch["images"], batch["t"], batch["eps"])
        t = ops.cast(batch["t"], "float32")
        target = frozen(call("teacher", inputs(x_t, t, batch), training=False))
        error = mse(call("unet", inputs(x_t, t, batch)), target)
        return error, {"loss": error}

    # Timesteps, noise and label dropout: the same draws as training the student from data.
    return {"teacher": teacher.networks["unet_ema"]}, loss, student.noise, {"unet_ema": "unet"}


SPEC = FamilySpec(
    name="ddpm",
    config=DDPMConfig,
    networks=("unet", "unet_ema"),
    phases=("unet",),
    build=build,
    generate=generate,
    noise_shape=noise_shape,
    sampling_networks=("unet_ema",),
    diffusion=True,
    denoiser=("unet_ema", "unet"),
    batch_separable=True,  # the mean eps MSE; GroupNorm is per image
    cpu_bf16_math=True,  # the pixel-space U-Net's 3x3 convolutions: a faster step in bfloat16 on AMX
    needs_dataset=True,  # a caption model takes its vocabulary from the training data
    progressive=True,
    width_key="base_channels",
    width_multiple_key="groups",
    student_trains=("unet",),
    architecture_student=architecture_student,
)
