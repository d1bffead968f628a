"""Validated parameters: the schema of ``params.yaml`` and ``-S key=value`` overrides.

Every knob of every stage lives in ``params.yaml`` and is checked here, once, at load time. An unknown
key, a wrong type or an impossible value stops with one message that names the key, the value given
and what was expected. Stages receive the resulting :class:`Params` object and never read YAML themselves.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from imagegen.errors import ConfigError

DEFAULT_PARAMS_FILE = Path("params.yaml")

MAX_BATCH_SIZE = 4096
"""Largest batch (or batch-sized sample) any stage accepts: far above what these models train with, far below
the point where one batch alone exhausts a machine's memory before failing."""

# The budget of YAML input (a params file or one -S value). Aliases count at the size of what they repeat, so
# an alias bomb (nested anchors that expand to a billion values) is refused while it is composed, not built.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_ALIASES = 1000
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64


def _strict_problem(annotation: Any, value: Any) -> str | None:
    """Why ``value`` must not be coerced to ``annotation`` (a bool for a number, a number for a bool), or None."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or len(args) != 1:
            return None
        annotation, origin = args[0], typing.get_origin(args[0])
    if annotation in (int, float) and isinstance(value, bool):
        kind = "an integer" if annotation is int else "a number"
        return f"expected {kind}, got the boolean {str(value).lower()}"
    if annotation is bool and not isinstance(value, bool):
        return f"expected true or false, got {value!r}"
    if origin is Literal and isinstance(value, bool):
        choices = typing.get_args(annotation)
        if not any(isinstance(c, bool) for c in choices):
            return f"expected one of {', '.join(map(repr, choices))}, got the boolean {str(value).lower()}"
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(annotation) or (Any,)
        for element in value:
            if (problem := _strict_problem(item, element)) is not None:
                return f"list item {element!r}: {problem}"
    return None


# A field's value for a model.json written before the field existed, where it differs from today's default
# (imagegen.artifact.load_model fills it in, so an old model is rebuilt as it was trained).
SAVED_WITHOUT = "saved_without"


def saved_without(section: Any, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` of a saved ``section`` (a pydantic model class; anything else is left alone) with every missing
    field that declares a ``saved_without`` value set to it."""
    filled = dict(values)
    for name, field in getattr(section, "model_fields", {}).items():
        extra = field.json_schema_extra
        if name not in filled and isinstance(extra, dict) and SAVED_WITHOUT in extra:
            filled[name] = extra[SAVED_WITHOUT]
    return filled


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, assignments are re-validated.

    Types are strict where lax coercion would hide a mistake: a boolean is not accepted for a number
    (pydantic would read ``-S train.batch_size=true`` as 1), nor a number or string for a boolean.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        problem = _strict_problem(field.annotation, value) if field is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value


DatasetName = Literal["digits", "mnist", "fashion_mnist", "cifar10", "folder"]


class DataConfig(Section):
    """Which dataset to ingest and how to shape it."""

    name: DatasetName = "digits"
    path: Path | None = Field(
        default=None,
        description="Explicit location of the raw files (for `folder`: the image folder). Looked at first.",
    )
    image_size: int = Field(default=16, ge=4, le=512, description="Square side in pixels after resizing.")
    channels: Literal[1, 3] | None = Field(
        default=None, description="1 (grayscale) or 3 (RGB); null keeps the dataset's own."
    )
    test_fraction: float = Field(
        default=0.15,
        gt=0.0,
        lt=1.0,
        description="Held-out share for sources without an official test split (digits, folder).",
    )
    download: bool = Field(default=True, description="Fetch missing raw files from the official URL.")
    mirror: str | None = Field(default=None, description="Base URL used instead of the official one (same file names).")
    processed_dir: Path = Path("data/processed")
    caption_template: str | None = Field(
        default=None,
        description="Caption per class, '{class}' = the class name, e.g. 'a photo of a {class}' (null: no captions; "
        "a folder's captions.csv is used whatever this is).",
    )
    caption_max_length: int = Field(default=16, gt=0, description="Words per caption kept at ingest (token ids).")
    max_image_pixels: int = Field(
        default=4096 * 4096,
        gt=0,
        description="Pixel budget per image of a `folder` dataset (width x height from its header); a larger "
        "image is refused before it is decoded.",
    )

    @field_validator("caption_template")
    @classmethod
    def _template_has_class(cls, v: str | None) -> str | None:
        if v is not None and "{class}" not in v:
            raise ValueError(f"expected a caption containing '{{class}}' (replaced by each class name), got {v!r}")
        return v

    @property
    def output_dir(self) -> Path:
        """Where the processed dataset of this config lives."""
        return self.processed_dir / self.name


class TrackingConfig(Section):
    """MLflow tracking. ``uri: null`` means $MLFLOW_TRACKING_URI, else a SQLite file in the project."""

    enabled: bool = True
    uri: str | None = None
    experiment: str = Field(default="imagegen", min_length=1)
    connect_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="Reachability check of an http(s) tracking server at run start."
    )
    http_timeout_s: int = Field(
        default=10, ge=1, description="MLFLOW_HTTP_REQUEST_TIMEOUT unless set: seconds per HTTP request."
    )
    http_max_retries: int = Field(
        default=2, ge=0, le=10, description="MLFLOW_HTTP_REQUEST_MAX_RETRIES unless set (MLflow's own is 7)."
    )


class TrainConfig(Section):
    """Knobs of the training loop shared by all families."""

    batch_size: int = Field(
        default=64,
        gt=0,
        le=MAX_BATCH_SIZE,
        description=f"Images per training step; at most {MAX_BATCH_SIZE} and at most the training split's size.",
    )
    checkpoint_every: int = Field(default=200, gt=0, description="Steps between checkpoints.")
    sample_every: int = Field(default=500, gt=0, description="Steps between sample grids.")
    log_every: int = Field(default=25, gt=0, description="Steps between metric logs.")
    keep_checkpoints: int = Field(default=2, gt=0)
    mixed_precision: Literal["auto", "off", "bf16"] = Field(
        default="auto", description="auto: bf16 on a GPU that supports it, float32 on CPU."
    )
    cpu_math: Literal["auto", "float32", "bf16"] = Field(
        default="auto",
        description="Float32 convolutions on a CPU (TensorFlow, oneDNN): bf16 computes them in bfloat16 on CPUs "
        "with AMX (float32 in and out, as TF32 on GPUs; a CPU with AVX512_BF16 but no AMX, such as AMD's Zen 4, "
        "computes float32 anyway, and model.json's cpu_math says so); float32 keeps full precision; auto: the "
        "family's own choice (FamilySpec.cpu_bf16_math). Applies to `imagegen train` and `imagegen distill`.",
    )
    jit_compile: Literal["auto"] | bool = Field(
        default="auto",
        description="XLA-compile the train step. auto: on with JAX (which runs op by op without it) and on a GPU; "
        "off for TensorFlow on a CPU, where the compile costs more than XLA saves at this "
        "project's model sizes.",
    )
    devices: Literal["auto"] | int = Field(
        default="auto",
        description="Data-parallel devices per process (JAX backend): auto = every local accelerator "
        "(on CPU the devices jax reports, 1 unless XLA_FLAGS forces more); batch_size must divide by the total.",
    )
    grid_size: int = Field(
        default=64, gt=0, le=MAX_BATCH_SIZE, description=f"Images in each sample grid (one batch; <= {MAX_BATCH_SIZE})."
    )

    @field_validator("devices", mode="before")
    @classmethod
    def _devices_auto_or_positive(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise ValueError(f"expected 'auto' or a positive integer, got {value!r}")

    max_minutes: float | None = Field(
        default=None, gt=0, description="Wall-clock budget; stop with a checkpoint at the first log step past it."
    )
    min_sample_diversity: float = Field(
        default=0.1,
        ge=0,
        description="Collapse check at the end of training: warn when the samples' mean pairwise distance is "
        "below this fraction of real images' (mode collapse: every sample the same image).",
    )
    min_sample_contrast: float = Field(
        default=0.1,
        ge=0,
        description="Collapse check: warn when the samples' mean pixel spread is below this fraction of real "
        "images' (flat samples).",
    )
    models_dir: Path = Path("models")
    reports_dir: Path = Field(default=Path("reports"), description="metrics.json and train_log.csv per stage.")
    checkpoints_dir: Path = Field(
        default=Path("checkpoints"), description="Resume state; kept outside the DVC-tracked model folder."
    )


class FamilySection(Section):
    """What every model family's section has besides its own knobs."""

    batch_size: int | None = Field(
        default=None,
        gt=0,
        le=MAX_BATCH_SIZE,
        description="Images per training step of this family; null: train.batch_size. At most the training split.",
    )

    def effective_batch_size(self, train: TrainConfig) -> int:
        """This family's batch size: its own ``batch_size``, else ``train.batch_size``."""
        return self.batch_size or train.batch_size

    def as_spec(self) -> dict[str, Any]:
        """The section as a model's ``spec`` records it: what the networks are and how they learn. The batch size
        is left out, as ``train.batch_size`` is: it is the loop's, and a model folder is the same whatever it was
        (MLflow's run params keep it)."""
        return self.model_dump(mode="json", exclude={"batch_size"})


class DCGANConfig(FamilySection):
    latent_dim: int = Field(default=64, gt=0)
    base_filters: int = Field(default=32, gt=0)
    conditional: bool = False
    steps: int = Field(default=2000, gt=0, description="2000: FID as at 3000 on the digits (bench/steps_curve.py)")
    learning_rate: float = Field(default=2e-4, gt=0)
    beta_1: float = Field(default=0.5, ge=0, lt=1)


class StyleGAN2Config(FamilySection):
    """StyleGAN2 with adaptive discriminator augmentation (ADA); defaults sized for the 16x16 digits."""

    latent_dim: int = Field(default=64, gt=0)
    w_dim: int = Field(default=64, gt=0, description="Width of the intermediate latent w (the styles' input).")
    mapping_layers: int = Field(default=2, gt=0, description="Layers of the mapping MLP z -> w.")
    mapping_lr_multiplier: float = Field(default=0.01, gt=0, description="Learning-rate multiplier of the mapping.")
    base_channels: int = Field(default=16, gt=0, description="Feature maps at full resolution (x2 per halving).")
    max_channels: int = Field(default=64, gt=0)
    conditional: bool = False
    steps: int = Field(default=1400, gt=0)
    learning_rate: float = Field(default=0.002, gt=0)
    beta_1: float = Field(default=0.0, ge=0, lt=1)
    beta_2: float = Field(default=0.99, ge=0, lt=1)
    r1_gamma: float = Field(default=0.01, ge=0, description="R1 weight gamma (penalty gamma/2 ||grad D(real)||^2).")
    r1_interval: int = Field(default=16, gt=0, description="Lazy R1: applied every this many steps, times this.")
    style_mixing: float = Field(default=0.9, ge=0, le=1, description="Share of fakes drawn with two mixed w.")
    ema_decay: float = Field(default=0.995, ge=0, lt=1, description="EMA of the generator (sampled and exported).")
    w_avg_decay: float = Field(default=0.995, ge=0, lt=1, description="Moving average of w kept for truncation.")
    mbstd_group: int = Field(default=4, gt=0, description="Images per minibatch standard-deviation group.")
    augment: bool = Field(default=True, description="Adaptive discriminator augmentation (ADA).")
    ada_target: float = Field(default=0.6, gt=0, lt=1, description="Target of r_t = E[sign(D(real))].")
    ada_interval: int = Field(default=4, gt=0, description="Steps between updates of the augmentation probability.")
    ada_kimg: float = Field(
        default=20.0, gt=0, description="Thousands of real images over which p may move from 0 to 1."
    )


class VAEConfig(FamilySection):
    latent_dim: int = Field(default=16, gt=0)
    base_filters: int = Field(default=32, gt=0)
    beta: float = Field(
        default=0.5,
        ge=0,
        description="loss = reconstruction + beta * KL. 0.5 with the Bernoulli term weighs reconstruction against "
        "the KL as the gaussian term with beta 1 does at mid-grey pixels (use 1.0 with likelihood=gaussian).",
    )
    likelihood: Literal["bernoulli", "gaussian"] = Field(
        default="bernoulli",
        description="Reconstruction term: bernoulli (pixel brightness, on the decoder's logits; never stuck when "
        "the output saturates) | gaussian (squared error of the tanh output; can saturate all black on dark "
        "images).",
    )
    free_bits: float = Field(
        default=0.1,
        ge=0,
        description="Nats per latent dimension not penalised by the KL term (guards against posterior "
        "collapse; 0: plain KL).",
    )
    min_kl_per_image: float = Field(
        default=1.0, ge=0, description="Warn (and flag collapse_warning) when the KL per image falls below this."
    )
    steps: int = Field(default=1500, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)


class DDPMConfig(FamilySection):
    base_channels: int = Field(default=16, gt=0)
    channel_mults: list[int] = Field(default_factory=lambda: [1, 2])
    num_res_blocks: int = Field(default=1, gt=0)
    attention_resolutions: list[int] = Field(
        default_factory=list, description="Extra attention at these sides (the middle block always has one)."
    )
    groups: int = Field(default=8, gt=0, description="GroupNorm groups; must divide every width.")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    schedule: Literal["linear", "cosine"] = "linear"
    timesteps: int = Field(default=1000, gt=1)
    beta_start: float = Field(default=1e-4, gt=0, lt=1)
    beta_end: float = Field(default=0.02, gt=0, lt=1)
    conditional: bool = False
    label_dropout: float = Field(default=0.1, ge=0, lt=1, description="For classifier-free guidance.")
    captions: bool = Field(default=False, description="Caption (text) conditioning; excludes `conditional`.")
    caption_dropout: float = Field(default=0.1, ge=0, lt=1, description="Null-caption share, for guidance.")
    cross_attention_resolutions: list[int] = Field(
        default_factory=lambda: [8], description="Caption cross-attention at these sides (and in the middle block)."
    )
    text_width: int = Field(default=64, gt=0, description="Text encoder width (token embedding).")
    text_layers: int = Field(default=2, ge=0, description="Transformer layers of the text encoder.")
    text_heads: int = Field(default=4, gt=0, description="Attention heads; must divide text_width.")
    text_pooling: Literal["mean", "last"] = Field(
        default="last",
        description="The caption summary added to the time embedding: 'last' = the encoded last real token "
        "(the class word of 'a photo of a {class}', which a mean over the shared words dilutes), 'mean' = the "
        "mean over real tokens.",
        json_schema_extra={SAVED_WITHOUT: "mean"},  # how models saved before this key were built
    )
    text_max_length: int = Field(default=16, gt=0, description="Tokens per caption seen by the text encoder.")
    text_vocabulary: list[str] = Field(
        default_factory=list, description="Filled from the dataset's vocabulary at train time and kept in model.json."
    )
    text_encoder_weights: Path | None = Field(
        default=None, description="A local .weights.h5 of a text encoder of this shape, loaded before training."
    )
    ema_decay: float = Field(default=0.995, ge=0, lt=1)
    steps: int = Field(default=1500, gt=0)
    learning_rate: float = Field(default=2e-3, gt=0)

    @field_validator("channel_mults")
    @classmethod
    def _mults_positive(cls, v: list[int]) -> list[int]:
        if not v or any(m <= 0 for m in v):
            raise ValueError("must be a non-empty list of positive integers")
        return v

    @model_validator(mode="after")
    def _check_widths(self) -> DDPMConfig:
        for m in self.channel_mults:
            if (self.base_channels * m) % self.groups:
                raise ValueError(
                    f"groups={self.groups} must divide every U-Net width "
                    f"(base_channels*mult = {self.base_channels * m})"
                )
        if self.beta_end <= self.beta_start:
            raise ValueError(f"beta_end={self.beta_end} must exceed beta_start={self.beta_start}")
        if self.captions and self.conditional:
            raise ValueError("captions=true and conditional=true: choose caption or class-label conditioning")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_heads={self.text_heads} must divide text_width={self.text_width}")
        return self


class LDMConfig(DDPMConfig):
    """Latent diffusion: the DDPM U-Net (DDPMConfig's fields) trained on the latents of a trained VAE.

    The U-Net runs on the VAE latent laid out as a square grid (:func:`imagegen.training.families.ldm.latent_grid`),
    so it is small and cheap; its defaults differ from the pixel DDPM's accordingly.
    """

    base_channels: int = Field(default=32, gt=0)
    batch_size: int | None = Field(
        default=256,
        gt=0,
        le=MAX_BATCH_SIZE,
        description="Images per training step; null: train.batch_size. The U-Net's 4x4 latent grid makes a step "
        "mostly per-op overhead, so 256 latents cost 2.5x what 64 do: 500 steps of 256 see the data of 2000 of 64 "
        "in 60% of the time (bench/seed_spread.py).",
    )
    steps: int = Field(
        default=400,
        gt=0,
        description="Training steps; on the digits FID 1.205 at 300, 1.053 at 400, 1.014 at 500 "
        "(reports/bench/steps_curve_ldm.csv).",
    )
    learning_rate: float = Field(default=1e-3, gt=0)
    vae: Path = Field(
        default=Path("models/vae"),
        description="The trained VAE (`imagegen train vae`) whose frozen encoder and decoder are copied into the LDM.",
    )
    scale_factor: float | None = Field(
        default=None,
        gt=0,
        description="Latent scale; null: 1/std of the VAE encoder means over the training set (recorded in the model).",
    )


ANCESTRAL_SAMPLER = "ddpm"  # DDPM ancestral sampling: every one of the T steps; ignores steps and timesteps
DDIM_SAMPLER = "ddim"


class SampleConfig(Section):
    sampler: Literal["ddpm", "ddim"] = "ddim"
    steps: int = Field(default=50, gt=0)
    eta: float = Field(default=0.0, ge=0)
    n: int = Field(default=64, gt=0)
    guidance_scale: float = Field(default=1.0, ge=0)
    clip_x0: bool = Field(default=True, description="Clip each predicted x0 to [-1, 1] (diffusion samplers).")
    truncation: float = Field(
        default=1.0, gt=0, le=1, description="Style-based generators: w -> w_avg + t (w - w_avg) (1: no truncation)."
    )
    max_images: int = Field(
        default=1_000_000,
        gt=0,
        description="Most images one `imagegen sample` may draw: 20x FID-50k; refuses a typo like --n 1000000000.",
    )


class EvaluateConfig(Section):
    """Feature extractor training and sample-quality metrics."""

    n_samples: int = Field(default=1000, gt=1, description="Generated images per evaluation.")
    max_real: int = Field(default=10000, gt=1, description="Held-out real images used (the whole test split if fewer).")
    feature_epochs: int = Field(default=8, gt=0)
    feature_width: int = Field(default=32, gt=0, description="Filters of the feature classifier's first conv.")
    feature_dim: int = Field(default=128, gt=1, description="Width of the penultimate (feature) layer.")
    feature_learning_rate: float = Field(default=1e-3, gt=0)
    features_dir: Path = Path("models/features")
    kid_subsets: int = Field(default=50, gt=0)
    kid_subset_size: int = Field(default=500, gt=1)
    knn_k: int = Field(default=3, gt=0, description="k of the k-NN manifolds for precision/recall.")
    batch_size: int = Field(
        default=256,
        gt=0,
        le=MAX_BATCH_SIZE,
        description=f"Images per batch when sampling and extracting features (<= {MAX_BATCH_SIZE}).",
    )
    inception_weights: Path | None = Field(
        default=None, description="Local InceptionV3 ImageNet weights (.h5) for extra FID; never downloaded."
    )
    models: dict[str, Path] = Field(
        default_factory=lambda: {
            "dcgan": Path("models/dcgan"),
            "vae": Path("models/vae"),
            "ddpm": Path("models/ddpm"),
            "ddpm_student": Path("models/ddpm_student_progressive/final"),
            "ldm": Path("models/ldm"),
            "stylegan2": Path("models/stylegan2"),
        },
        description="Models evaluated by the pipeline: name -> model folder (dvc.yaml's evaluate foreach).",
    )


class DistillConfig(Section):
    """Teacher-student distillation (``imagegen distill``): progressive (DDPM) and architecture (every family)."""

    start_steps: int = Field(
        default=16, gt=1, description="Progressive: the teacher's DDIM steps that the first round halves."
    )
    target_steps: int = Field(default=4, ge=1, description="Progressive: rounds halve the steps down to this.")
    steps_per_round: int = Field(default=150, gt=0, description="Progressive: training steps per round.")
    learning_rate: float = Field(
        default=1e-4, gt=0, description="Progressive: Adam learning rate (student starts as the teacher)."
    )
    weighting: Literal["snr", "truncated_snr"] = Field(
        default="snr",
        description=(
            "Progressive loss weight on the x0 error: SNR (= the eps MSE; steady for our eps-prediction U-Net) "
            "or max(SNR, 1) (Salimans & Ho 2022's truncated SNR, meant for x/v-prediction)."
        ),
    )
    width_factor: float = Field(
        default=0.5, gt=0, le=1, description="Architecture: student width as a fraction of the teacher's."
    )
    architecture_steps: int = Field(default=1500, gt=0, description="Architecture: training steps.")
    architecture_learning_rate: float = Field(default=2e-3, gt=0, description="Architecture: Adam learning rate.")
    feature_weight: float = Field(
        default=0.1, ge=0, description="Architecture, DCGAN: weight of matching the evaluation features (0: off)."
    )
    ema_decay: float = Field(default=0.995, ge=0, lt=1, description="EMA of the DDPM student's weights.")
    batch_size: int | None = Field(
        default=None, gt=0, le=MAX_BATCH_SIZE, description=f"null: train.batch_size (<= {MAX_BATCH_SIZE})."
    )
    compare_n: int = Field(default=256, gt=0, description="Images on the same noise for student-vs-teacher SSIM/PSNR.")
    speed_n: int = Field(
        default=128,
        gt=0,
        le=MAX_BATCH_SIZE,
        description=(
            "Images per timed batch for images/s where no sampling gives it: the knowledge method, and models "
            f"sampled in fewer than two full evaluate.batch_size batches (the others time those batches; "
            f"<= {MAX_BATCH_SIZE})."
        ),
    )
    discriminator_weight: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Architecture, DCGAN: weight of T^2 KL between the teacher discriminator's softened outputs on the "
            "teacher's and the student's images for the same z (0: off)."
        ),
    )
    temperature: float = Field(default=4.0, gt=0, description="Knowledge (and the discriminator term): KL's T.")
    kd_alpha: float = Field(
        default=0.5, ge=0, le=1, description="Knowledge: weight of T^2 KL; the hard-label loss gets 1 - kd_alpha."
    )
    kd_width_factor: float = Field(
        default=0.25, gt=0, le=1, description="Knowledge: student classifier width (and feature_dim) / the teacher's."
    )
    kd_epochs: int = Field(default=30, gt=0, description="Knowledge: epochs of the student (and the baseline).")

    @model_validator(mode="after")
    def _check_steps(self) -> DistillConfig:
        if self.target_steps > self.start_steps:
            raise ValueError(f"target_steps={self.target_steps} must not exceed start_steps={self.start_steps}")
        ratio = self.start_steps // self.target_steps
        if self.start_steps % self.target_steps or ratio & (ratio - 1):
            raise ValueError(
                f"start_steps={self.start_steps} must be target_steps={self.target_steps} times a power of two "
                "(each progressive round halves the steps)"
            )
        return self


class ExportConfig(Section):
    """SavedModel and TFLite export, with parity thresholds against the Keras model."""

    export_dir: Path = Path("exports")
    tflite_variants: list[Literal["float32", "float16", "int8"]] = Field(
        default_factory=lambda: ["float32", "float16", "int8"]
    )
    ddpm_steps: int = Field(default=4, gt=0, description="DDIM steps unrolled inside the exported diffusion graph.")
    int8_quantization: Literal["fastest", "dynamic_range", "full_integer"] = Field(
        default="fastest",
        description="The int8 TFLite: dynamic_range (int8 weights), full_integer (int8 weights and activations, "
        "calibrated on calibration_n generator inputs), or fastest: both, keep full_integer when it passes parity "
        "(XNNPACK's int8 kernels, which dynamic_range lacks), else dynamic_range. "
        "A fixed rule: the file kept never depends on a timing.",
    )
    calibration_n: int = Field(default=64, gt=0, description="Inputs (noise, labels) calibrating full_integer int8.")
    parity_n: int = Field(default=16, gt=0, description="Fixed inputs compared between Keras and each artifact.")
    max_abs_error: dict[str, float] = Field(
        default_factory=lambda: {"savedmodel": 2.0, "float32": 2.0, "float16": 16.0, "int8": 48.0},
        description="Largest allowed |uint8 difference| to the Keras images, per artifact. float16 leaves room for "
        "its rounded weights' drift through an unrolled sampler and a decoder (single pixels, up to 10 levels "
        "measured), far below what a broken conversion does.",
    )
    min_ssim: dict[str, float] = Field(
        default_factory=lambda: {"savedmodel": 0.99, "float32": 0.99, "float16": 0.95, "int8": 0.6},
        description="Smallest allowed mean SSIM to the Keras images, per artifact.",
    )
    latency_repeats: int = Field(
        default=10, gt=0, description="Timed calls per artifact after the parity call; their median is the latency."
    )
    conversion_workers: Literal["auto"] | int = Field(
        default="auto",
        description="Worker processes converting TFLite variants beside the exporting one (each converts one "
        "variant; a conversion is single-threaded). auto: one per variant beyond the first for a diffusion "
        "sampler (seconds per conversion) when more than one core is usable, else none (0: none).",
    )

    @field_validator("conversion_workers", mode="before")
    @classmethod
    def _workers_auto_or_count(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise ValueError(f"expected 'auto' or a number of processes >= 0, got {value!r}")

    ship: dict[str, Path] = Field(
        default_factory=lambda: {
            "dcgan": Path("models/dcgan"),
            "vae": Path("models/vae"),
            "ddpm_student": Path("models/ddpm_student_progressive/final"),
            "ldm": Path("models/ldm"),
        },
        description="Models the pipeline exports, registers and promotes: name -> model folder (dvc.yaml's "
        "export/register foreach over it; the Prefect flow ships the names it built).",
    )


class RegistryConfig(Section):
    """MLflow model registry: one registered model per family and dataset; aliases champion/challenger."""

    name_template: str = Field(
        default="imagegen-{family}-{dataset}",
        min_length=1,
        description="Registered model name; the fields {family} and {dataset} are filled in.",
    )

    @field_validator("name_template")
    @classmethod
    def _template_fields_known(cls, v: str) -> str:
        """Fill the template now with dummy values, so a misspelt field stops the load, not a late register."""
        allowed = "expected only the fields {family} and {dataset}"
        try:
            v.format(family="family", dataset="dataset")
        except KeyError as exc:
            raise ValueError(f"unknown field {{{exc.args[0]}}}; {allowed}") from None
        except IndexError:
            raise ValueError(f"a positional field {{}}; {allowed}") from None
        except (ValueError, AttributeError, TypeError) as exc:
            raise ValueError(f"not a valid template ({exc}); {allowed}, and literal braces doubled") from None
        return v

    gate_metric: Literal["fid", "kid_mean"] = "fid"
    min_improvement: float = Field(
        default=0.02, ge=0, lt=1, description="Relative improvement of the gate metric needed to replace the champion."
    )
    # The absolute floor every version must clear (a first version too). It means the same on any dataset and
    # test-set size: FID as a share of the real features' total variance (a mean-image generator scores ~1 or
    # more), and shares of samples or classes.
    max_relative_fid: float = Field(
        default=0.5,
        gt=0,
        description="FID / total variance of the real features (eval.relative_fid) must be <= this.",
    )
    min_precision: float = Field(default=0.2, ge=0, le=1)
    min_recall: float = Field(default=0.2, ge=0, le=1)
    min_class_coverage: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Share of classes the samples cover (eval.class_coverage).",
    )
    min_class_entropy: float = Field(
        default=0.3, ge=0, le=1, description="Entropy of the predicted classes / log(num_classes)."
    )

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, data: Any) -> Any:
        """A params file written for an earlier gate gets told what replaced a key, not just "unknown key"."""
        if not isinstance(data, dict):
            return data
        if "max_fid_over_floor" in data:
            raise ValueError(
                "max_fid_over_floor was replaced by max_relative_fid (FID / the real features' total variance, "
                "default 0.5): a ratio to the real-vs-real floor FID depended on the test-set size"
            )
        if "min_coverage" in data:
            raise ValueError(
                "min_coverage is now min_class_coverage (the share of classes the samples cover; `coverage` is "
                "the coverage of Naeem et al.)"
            )
        return data

    # Collapse: never promoted without --force; > 0 so no setting turns the check off.
    collapse_class_entropy: float = Field(default=0.05, gt=0, le=1)
    collapse_recall: float = Field(default=0.01, gt=0, le=1)
    lock_timeout_s: float = Field(
        default=120, gt=0, description="How long a promote waits for another promote of the same model."
    )


class PublishConfig(Section):
    """Where the Prefect flow publishes a successful run (``pipelines/publish.py``); git_remote null: not published."""

    git_remote: str | None = Field(
        default=None,
        description="Git remote (name or URL, e.g. origin) that gets the run as a DVC experiment: its dvc.lock, "
        "params and metrics (`dvc exp push`). null: the run is not published.",
    )
    dvc_remote: str | None = Field(
        default=None, description="DVC remote that gets the run's outputs; null: the project's default remote."
    )


class PipelineConfig(Section):
    """The Prefect flow (``pipelines/flow.py``); no stage reads these, so changing them makes nothing stale."""

    lock_timeout_s: float = Field(
        default=3600, ge=0, description="How long a DVC command of the flow waits for another DVC process's lock."
    )
    progress_every_s: float = Field(
        default=30, gt=0, description="Seconds between the progress lines of a running stage in the flow's logs."
    )
    publish: PublishConfig = Field(default_factory=PublishConfig)


class Params(Section):
    """The whole of params.yaml."""

    seed: int = Field(default=0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    dcgan: DCGANConfig = Field(default_factory=DCGANConfig)
    stylegan2: StyleGAN2Config = Field(default_factory=StyleGAN2Config)
    vae: VAEConfig = Field(default_factory=VAEConfig)
    ddpm: DDPMConfig = Field(default_factory=DDPMConfig)
    ldm: LDMConfig = Field(default_factory=LDMConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    def to_flat_dict(self) -> dict[str, Any]:
        """Dotted keys -> values, e.g. for MLflow params."""
        return flatten(self.model_dump(mode="json"))


# --------------------------------------------------------------------------------------------------
# Loading, overrides and error messages


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


_BOOL_TAG = "tag:yaml.org,2002:bool"
_YAML12_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class _YamlBudgetExceeded(yaml.YAMLError):
    """A document that would expand past the YAML input budget (an alias bomb, or absurdly large or deep)."""


def _child_nodes(node: yaml.Node) -> list[yaml.Node]:
    """The nodes directly inside ``node`` (a mapping's keys and values), none for a scalar."""
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return []


class _UniqueKeyLoader(yaml.SafeLoader):
    """The params reader: yaml.SafeLoader with duplicate keys refused, YAML 1.2 booleans and an input budget.

    - A key given twice in one mapping is an error (PyYAML keeps the last silently).
    - Booleans are YAML 1.2's, as DVC reads params.yaml and ``-S``: only true/false, so ``off``, ``on``, ``yes``
      and ``no`` stay strings (``train.mixed_precision: off`` is the string the schema expects).
    - Composition is budgeted: every alias counts at the expanded size of the node it repeats, so nested
      anchors that would construct a billion values stop after ``MAX_YAML_NODES``, before anything is built.
    """

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._expanded: dict[int, int] = {}  # id(node) -> values it stands for once its aliases are expanded
        self._total = 0
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        """Compose as PyYAML does, charging each node (an alias: its whole expansion) to the budget."""
        line = self.peek_event().start_mark.line + 1
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise _YamlBudgetExceeded(f"more than {MAX_YAML_ALIASES} aliases (line {line})")
            size = self._expanded.get(id(node))
            if size is None:  # the anchor is still open: the alias repeats a node that contains it
                raise _YamlBudgetExceeded(f"the alias at line {line} repeats a node that contains it")
            self._charge(size, line)
            return node
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise _YamlBudgetExceeded(f"nested more than {MAX_YAML_DEPTH} levels deep (line {line})")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._expanded[id(node)] = 1 + sum(self._expanded[id(child)] for child in _child_nodes(node))
        self._charge(1, line)
        return node

    def _charge(self, size: int, line: int) -> None:
        """Add ``size`` values to the document's expanded total; refuse the document past the budget."""
        self._total += size
        if self._total > MAX_YAML_NODES:
            raise _YamlBudgetExceeded(f"expands to more than {MAX_YAML_NODES} values (at line {line})")


_UniqueKeyLoader.add_implicit_resolver(_BOOL_TAG, _YAML12_BOOL, list("tTfF"))


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged by construct_mapping, not a key
            continue
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (lines {seen[key]} and {line})", key_node.start_mark
                )
            seen[key] = line
        except TypeError:  # an unhashable key: let the base constructor report it
            pass
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


class DuplicateKeyError(ConfigError):
    """A YAML mapping names the same key twice."""


class YamlBudgetError(ConfigError):
    """YAML input larger, deeper or (through aliases) more expansive than the input budget allows."""


_BUDGET = (
    f"expected YAML within the input budget (at most {MAX_YAML_BYTES} bytes, {MAX_YAML_NODES} values with aliases "
    f"expanded, {MAX_YAML_ALIASES} aliases, {MAX_YAML_DEPTH} levels)"
)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML (1.2 booleans, duplicate keys refused, within the input budget); a ConfigError names ``source``.

    The budget is checked while the document is composed, so an alias bomb is refused in milliseconds and
    nothing of its expansion is built or printed.
    """
    if len(text) > MAX_YAML_BYTES:
        raise YamlBudgetError(f"{source}: {len(text)} characters; {_BUDGET}")
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _YamlBudgetExceeded as exc:
        raise YamlBudgetError(f"{source}: {exc}; {_BUDGET}") from None
    except yaml.constructor.ConstructorError as exc:
        if exc.problem and exc.problem.startswith("duplicate key"):
            raise DuplicateKeyError(f"{source}: {exc.problem}; give each key once") from None
        raise ConfigError(f"{source}: not valid YAML ({_one_line(exc)})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({_one_line(exc)})") from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _clip(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters: a message quotes what was given, never megabytes of it."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` as ``dvc exp run -S`` spells it (an optional ``params.yaml:`` prefix too).

    The value is read as YAML, so ``-S train.batch_size=32`` gives an int and ``-S data.path=null`` None.
    """
    if "=" not in text:
        raise ConfigError(f"override {_clip(text)!r}: expected KEY=VALUE, e.g. -S data.name=mnist")
    key, _, raw = text.partition("=")
    key = key.strip()
    if ":" in key:  # dvc allows `params.yaml:key=value`
        file_part, _, key = key.rpartition(":")
        if Path(file_part).name != DEFAULT_PARAMS_FILE.name:
            raise ConfigError(f"override {_clip(text)!r}: only params.yaml keys can be overridden")
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {_clip(text)!r}: empty key")
    value = load_yaml(raw, f"override {_clip(text)!r}: value") if raw.strip() else ""
    return key, value


def apply_overrides(tree: dict[str, Any], overrides: list[str], source: str = "override") -> dict[str, Any]:
    """Return a copy of ``tree`` with each ``key=value`` applied; unknown sections fail in validation."""
    result = copy.deepcopy(tree)
    for text in overrides:
        key, value = parse_override(text)
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source} {_clip(text)!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def _format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem naming the key and the reason; a whole section's value is never dumped."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err["input"]
        # A section-level check (a model validator) or an unknown section: the reason, not the whole dict.
        section_level = isinstance(value, dict) and err["type"] in ("value_error", "assertion_error", "extra_forbidden")
        shown = "" if section_level else f" = {_clip(repr(value))}"
        if err["type"] == "extra_forbidden":
            lines.append(
                f"{source}: unknown key {key!r}{shown.replace(' = ', ' (value ', 1) + ')' if shown else ''}"
                "; check the spelling"
            )
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            lines.append(f"{source}: {key}{shown}: {msg}")
    return "\n".join(lines)


def validate(tree: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def read_params_text(path: Path) -> str:
    """The text of the params file ``path``, refused in one line unless it is readable UTF-8 within the budget.

    At most ``MAX_YAML_BYTES`` + 1 bytes are read, so a huge file or a device such as /dev/zero is refused
    without being read whole.
    """
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; expected a YAML params file")
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc}); expected a readable YAML file") from None
    if len(data) > MAX_YAML_BYTES:
        raise YamlBudgetError(f"{path}: larger than {MAX_YAML_BYTES} bytes; {_BUDGET}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}: byte 0x{data[exc.start]:02x} at line {line} is not UTF-8; expected UTF-8 YAML"
        ) from None


def load_params(path: Path | str | None = None, overrides: list[str] | None = None) -> Params:
    """Load ``params.yaml`` (defaults if the file is absent and none was asked for), apply overrides, validate."""
    explicit = path is not None
    path = Path(path) if path is not None else DEFAULT_PARAMS_FILE
    tree: dict[str, Any] = {}
    if path.exists():
        loaded = load_yaml(read_params_text(path), str(path))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
        tree = loaded
    elif explicit:
        raise ConfigError(f"{path}: params file not found")
    source = str(path)
    if overrides:
        tree = apply_overrides(tree, overrides, source="-S")
        source = f"{path} with -S {' '.join(map(_clip, overrides))}"
    return validate(tree, source)


def dump_params(params: Params) -> str:
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
