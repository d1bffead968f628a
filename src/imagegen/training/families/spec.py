"""What a model family declares about itself: :class:`FamilySpec`, one per family module (its ``SPEC``).

Everything outside ``imagegen.training.families`` that depends on the kind of model asks the declaration, never
the family's name: how it is built (and from which trained models), which networks it samples with, how its
noise is shaped (the export signature and parity inputs follow from that), which distillation methods it takes
and what an architecture student of it shrinks. Adding a family is one module with a ``SPEC``, its name in
:data:`imagegen.training.families.FAMILIES` and its params section in :mod:`imagegen.config`.

This module imports no Keras, so the declarations' types can be named anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

PROGRESSIVE = "progressive"
ARCHITECTURE = "architecture"


@dataclass(frozen=True)
class Requirement:
    """A trained model a family is built from during training (an LDM's VAE).

    Its folder is ``<section>.<key>`` of the params; it must hold a model of family ``family``. The training stage
    loads it and hands it to the family's ``build`` as ``trained[key]``; the family never loads models itself.
    ``label`` names the model in messages ("VAE").
    """

    key: str
    family: str
    label: str


@dataclass(frozen=True)
class FamilySpec:
    """One model family: its params section, networks, phases and every per-family choice the rest of imagegen makes.

    Callables take the family's own values: ``build(params, image_shape, num_classes, **extras)`` (``extras``:
    ``dataset`` when ``needs_dataset``, ``trained`` when ``requires``), ``generate(family, n, rng, labels=None,
    *, settings=SamplerSettings, predict=None, ...)`` (a family reads the settings that concern it and ignores
    the other keywords), ``noise_shape(spec)`` (per image, from a model's ``spec``; the noise a sample starts
    from: a latent vector, an image-shaped or latent-grid-shaped x_T).
    """

    name: str
    config: type  # the params section class (``imagegen.config``), read as ``params.<name>``
    networks: tuple[str, ...]  # what a model folder holds, one .weights.h5 each
    phases: tuple[str, ...]  # the optimiser updates of one training step, in order
    build: Callable[..., Any]
    generate: Callable[..., Any]
    noise_shape: Callable[[Mapping[str, Any]], tuple[int, ...]]
    # The networks a sample runs through (parameters and MACs count these; the first is called per step).
    sampling_networks: tuple[str, ...]
    # Inputs a sample takes after z (and a label), per image: ``extra_inputs(spec) -> ((name, shape), ...)``, float32
    # standard normal noise drawn on the host (a style-based generator's per-pixel noise). The sampling network
    # takes ``[z, label?, *extras]``; the export signature and parity inputs follow. None: z (and a label) only.
    extra_inputs: Callable[[Mapping[str, Any]], tuple[tuple[str, tuple[int, ...]], ...]] | None = None
    # Diffusion: sampled by an iterative sampler (the sampler keywords, an unrolled DDIM export graph).
    diffusion: bool = False
    # (EMA network, raw network) a diffusion sampler predicts noise with.
    denoiser: tuple[str, str] | None = None
    # Every loss is a batch mean of per-image terms, no batch statistics (see Family.batch_separable).
    batch_separable: bool = False
    # Train with float32 convolutions computed in bfloat16 on a CPU that has it (``train.cpu_math: auto``; oneDNN's
    # math mode and imagegen.training.step_tensorflow.bf16_convolutions): True where it measured faster
    # (bench/train_throughput.py with train.cpu_math=bf16 and float32), False where the shapes are too small for the
    # bfloat16 kernels to pay (the LDM's U-Net on a 4x4 latent grid).
    cpu_bf16_math: bool = False
    needs_dataset: bool = False  # build takes the processed training data (vocabulary, latent scale)
    requires: tuple[Requirement, ...] = ()
    # Export of a latent diffusion model: latents -> images tensor (inside the graph); None for pixel space.
    decode_latents: Callable[[Any, Any], Any] | None = None
    # Families that reconstruct images (evaluated by SSIM/PSNR of held-out reconstructions).
    reconstruct: Callable[[Any, Any], Any] | None = None
    watches_kl: bool = False  # the training stage watches the KL per image (posterior collapse)
    # Distillation. ``progressive``: a student taking one DDIM step for two of its teacher's.
    progressive: bool = False
    # ``architecture``: the section key a narrower student shrinks (None: the method is refused), the key whose
    # value that width must stay a multiple of, the student's trained networks, its loss builder
    # ``architecture_student(teacher, student, params, cfg, features) -> (teacher nets, loss, noise, ema)``, and
    # the ``distill.*`` knobs that builder reads beyond the common ones.
    width_key: str | None = None
    width_multiple_key: str | None = None
    student_trains: tuple[str, ...] = ()
    architecture_student: Callable[..., tuple[Any, Any, Any, dict[str, str]]] | None = None
    student_options: tuple[str, ...] = ()

    def conditioning(self, section: Mapping[str, Any]) -> str:
        """``"caption"``, ``"class"`` or ``"none"``: what a model of this section is conditioned on."""
        if section.get("captions"):
            return "caption"
        return "class" if section.get("conditional") else "none"

    def refusal(self, method: str, where: Any, section: Mapping[str, Any]) -> str | None:
        """Why ``method`` cannot distil the model in ``where`` (one line), or None when it can.

        Progressive distillation needs a batch-separable diffusion family that declares it, unconditional or
        class-conditioned (its rounds feed class labels only); architecture distillation needs a width key.
        """
        if method == PROGRESSIVE:
            if not (self.progressive and self.diffusion and self.batch_separable):
                return (
                    f"--method progressive needs a diffusion (ddpm) teacher, but {where} holds a "
                    f"{self.name!r} model; use --method architecture for dcgan and vae"
                )
            if self.conditioning(section) == "caption":
                return (
                    f"--method progressive: {where} holds a caption-conditioned {self.name} model, and progressive "
                    "rounds condition on class labels only; distil an unconditional or class-conditioned teacher"
                )
        if method == ARCHITECTURE and self.width_key is None:
            return (
                f"--method architecture: {where} holds a {self.name!r} model, which declares no width for a "
                "narrower student to shrink; distil a dcgan, vae or ddpm teacher"
            )
        return None
