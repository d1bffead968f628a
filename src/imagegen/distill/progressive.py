"""Progressive distillation of a DDPM (Salimans & Ho 2022, Algorithm 2) for our discrete eps-prediction U-Net.

Grids
-----
A round's teacher samples with deterministic DDIM on a descending grid ``G`` of ``2N`` timesteps (the first
round: ``ddim_timesteps(T, distill.start_steps)``); the student samples on ``G[::2]`` (``N`` steps). Student
step ``i`` goes from ``G[2i]`` to ``G[2i+2]``, covering the teacher's two steps ``G[2i] -> G[2i+1] -> G[2i+2]``;
its last step goes from ``G[2N-2]`` to the clean image, covering ``G[2N-2] -> G[2N-1] -> clean`` (DDIM's last
step always ends at abar = 1). The next round's teacher is this student and its grid ``G[::2]``, so every grid
is a subset of the first one: ``G[::2**k]`` after ``k`` rounds (not ``ddim_timesteps(T, N)``; the student
stores its grid in ``model.json``, see :func:`sampling_record`).

Target
------
With alpha = sqrt(abar), sigma = sqrt(1 - abar), and z_t = alpha_t x0 + sigma_t eps for a real image x0, the
frozen teacher takes two DDIM (eta = 0) steps t -> t' -> t''. One DDIM step of the student from t with
prediction x0_hat lands at alpha'' x0_hat + (sigma''/sigma_t)(z_t - alpha_t x0_hat); it equals the teacher's
z_t'' exactly when

    x0~ = (z_t'' - (sigma''/sigma_t) z_t) / (alpha'' - (sigma''/sigma_t) alpha_t)

(for t'' = clean, sigma'' = 0 and x0~ = z_t''). The denominator is positive because the SNR grows along the
grid. The teacher's steps clip its x0 prediction to [-1, 1] exactly when the sampler does
(``sample.clip_x0``), so the student learns the trajectory the teacher is actually sampled with.

Loss
----
``mean(w_t * ||x0~ - x0_hat(z_t, t)||^2)`` with x0_hat = (z_t - sigma_t eps_student) / alpha_t, unclipped (a
clip would zero the gradient wherever it bites). ``distill.weighting``:

* ``truncated_snr`` (the paper's choice): w_t = max(SNR_t, 1). In eps terms this is max(1, 1/SNR_t) times the
  eps error, so at the noisiest grid time (SNR ~ 4e-5 for the linear schedule at T-1) an eps error costs
  ~25,000 times more than at high SNR: the paper warns that eps-prediction is unstable there, and Adam's
  per-weight normalisation plus the clipped gradient norm are what keep it in check here.
* ``snr``: w_t = SNR_t, i.e. the plain eps MSE against the eps that reaches x0~ (the DDPM training loss's
  weighting); steadier for eps-prediction, weaker at the first, noisiest step.

The student starts as the teacher (same architecture and weights); its EMA copy (``unet_ema``, what sampling
uses) starts there too and follows with ``distill.ema_decay``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import keras
import numpy as np
from keras import ops

from imagegen.config import DistillConfig
from imagegen.distill.setup import (
    Distillation,
    check_method,
    copy_network,
    family_params,
    reset_optimizer,
)
from imagegen.errors import ConfigError
from imagegen.models.diffusion import (
    DDIMCoefficients,
    NoiseSchedule,
    check_timesteps,
    ddim_coefficients,
    ddim_timesteps,
    ddim_update,
    q_sample,
    schedule_from_config,
)
from imagegen.models.matching import frozen
from imagegen.models.unet import build_unet
from imagegen.training.families import build_family
from imagegen.training.families.base import Caller, Family, Phase
from imagegen.training.families.ddpm import drop_labels

METHOD = "progressive"


# --------------------------------------------------------------------------------------------------
# Grids


def student_grid(teacher_grid: np.ndarray) -> np.ndarray:
    """Every other timestep of the teacher's grid (which must have an even length >= 2)."""
    grid = np.asarray(teacher_grid, dtype=np.int64)
    if len(grid) < 2 or len(grid) % 2:
        raise ConfigError(
            f"progressive distillation: the teacher's grid needs an even number of steps, got {len(grid)}"
        )
    return grid[::2].copy()


@dataclass(frozen=True)
class Round:
    """One round: the teacher samples on ``teacher_grid`` (2N steps), the student on ``student_grid`` (N)."""

    index: int  # 1-based
    teacher_grid: np.ndarray
    student_grid: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.student_grid)


def plan_rounds(timesteps: int, start_steps: int, target_steps: int) -> list[Round]:
    """The rounds from ``start_steps`` down to ``target_steps`` (each halves), on nested grids."""
    if target_steps >= start_steps:
        raise ConfigError(
            f"distill: target_steps={target_steps} must be below start_steps={start_steps} for progressive "
            "distillation (each round halves the steps)"
        )
    ratio = start_steps // target_steps
    if start_steps % target_steps or ratio & (ratio - 1):
        raise ConfigError(
            f"distill: start_steps={start_steps} must be target_steps={target_steps} times a power of two"
        )
    grid = ddim_timesteps(timesteps, start_steps)
    rounds = []
    while len(grid) > target_steps:
        nxt = student_grid(grid)
        rounds.append(Round(len(rounds) + 1, grid, nxt))
        grid = nxt
    return rounds


def sampling_record(grid: np.ndarray) -> dict[str, Any]:
    """A student's default sampling for its ``model.json`` (read by ``SamplerSettings.resolve``)."""
    grid = [int(t) for t in grid]
    return {"sampler": "ddim", "steps": len(grid), "timesteps": grid, "eta": 0.0}


# --------------------------------------------------------------------------------------------------
# Coefficients and target


@dataclass(frozen=True)
class TargetCoefficients:
    """Per-example float32 (B,) coefficients of x0~ = target_z * z_t'' - target_x * z_t, weight."""

    target_z: np.ndarray
    target_x: np.ndarray
    weight: np.ndarray


def target_coefficients(
    schedule: NoiseSchedule, t: np.ndarray, t_end: np.ndarray, weighting: str
) -> TargetCoefficients:
    """Coefficients (float64 on the host, returned as float32) for ``t > t_end`` (-1: clean)."""
    abar = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
    t = np.asarray(t)
    t_end = np.asarray(t_end)
    abar_t = abar[t]
    abar_end = np.where(t_end < 0, 1.0, abar[np.maximum(t_end, 0)])
    alpha_t, sigma_t = np.sqrt(abar_t), np.sqrt(1.0 - abar_t)
    alpha_end, sigma_end = np.sqrt(abar_end), np.sqrt(1.0 - abar_end)
    ratio = sigma_end / sigma_t
    denominator = alpha_end - ratio * alpha_t
    snr = alpha_t**2 / sigma_t**2
    if weighting == "truncated_snr":
        weight = np.maximum(snr, 1.0)
    elif weighting == "snr":
        weight = snr
    else:
        raise ConfigError(f"distill.weighting {weighting!r}: expected 'truncated_snr' or 'snr'")
    return TargetCoefficients(
        target_z=(1.0 / denominator).astype(np.float32),
        target_x=(ratio / denominator).astype(np.float32),
        weight=weight.astype(np.float32),
    )


def x0_target(z_t: Any, z_end: Any, target_z: Any, target_x: Any) -> Any:
    """x0~, the x0 with which one DDIM step from z_t lands on z_end (coefficients broadcastable)."""
    return target_z * z_end - target_x * z_t


# --------------------------------------------------------------------------------------------------
# The family the Trainer runs


TEACHER_STEPS = ("teacher_step1", "teacher_step2")
"""Batch key prefixes of the coefficients of the teacher's two DDIM steps t -> t' -> t''."""


def _feed(prefix: str, coefficients: DDIMCoefficients) -> dict[str, np.ndarray]:
    return {f"{prefix}_{k}": np.asarray(v, dtype=np.float32) for k, v in coefficients.items()}


def _from_batch(prefix: str, batch: Mapping[str, Any]) -> DDIMCoefficients:
    names = (f.name for f in fields(DDIMCoefficients))
    return DDIMCoefficients(**{k: _per_image(batch[f"{prefix}_{k}"]) for k in names})


def _per_image(values: Any) -> Any:
    return ops.reshape(ops.cast(values, "float32"), (-1, 1, 1, 1))


def build_progressive(
    teacher: keras.Model,
    spec: Mapping[str, Any],
    teacher_grid: np.ndarray,
    cfg: DistillConfig,
    clip_x0: bool,
    name: str = "progressive",
) -> Distillation:
    """One round: ``teacher`` (an eps U-Net, frozen) on ``teacher_grid``; the student starts as a copy of it.

    ``spec`` is the teacher's model spec (``model.json`` ``spec``: the ``ddpm`` section, image shape, classes).
    The round trains its own copy of ``teacher`` (``networks["teacher"]``), so :func:`next_round` can overwrite
    it without touching the caller's network.
    """
    family_name = spec.get("family")
    check_method(METHOD, family_name, "the teacher's spec", spec.get(family_name) if family_name else None)
    params = family_params(spec)
    ddpm_cfg = params.ddpm
    image_shape = tuple(spec["image_shape"])
    num_classes = int(spec["num_classes"])
    schedule = schedule_from_config(ddpm_cfg)
    grid = check_timesteps(teacher_grid, schedule.timesteps)

    student = build_family("ddpm", params, image_shape, num_classes)
    teacher_copy = build_unet(ddpm_cfg, image_shape[0], image_shape[2], num_classes)
    for net in (teacher_copy, student.networks["unet"], student.networks["unet_ema"]):
        copy_network(teacher, net)
    conditional = ddpm_cfg.conditional

    def inputs(x: Any, t: Any, batch: Mapping[str, Any]) -> Any:
        return [x, t, batch["cond_labels"]] if conditional else [x, t]

    def loss(call: Caller, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        first, second = (_from_batch(prefix, batch) for prefix in TEACHER_STEPS)
        z_t = q_sample(schedule, batch["images"], batch["t"], batch["eps"])
        t = ops.cast(batch["t"], "float32")
        eps_1 = frozen(call("teacher", inputs(z_t, t, batch), training=False))
        z_1 = ddim_update(z_t, eps_1, first, clip_x0)
        t_1 = ops.cast(batch["t1"], "float32")
        eps_2 = frozen(call("teacher", inputs(z_1, t_1, batch), training=False))
        z_2 = ddim_update(z_1, eps_2, second, clip_x0)
        target = ops.stop_gradient(x0_target(z_t, z_2, _per_image(batch["target_z"]), _per_image(batch["target_x"])))
        eps_s = ops.cast(call("unet", inputs(z_t, t, batch)), "float32")
        x0_s = first.sqrt_recip_abar * z_t - first.sqrt_recipm1_abar * eps_s
        per_image = ops.mean(ops.square(target - x0_s), axis=(1, 2, 3))
        weighted = ops.mean(ops.cast(batch["weight"], "float32") * per_image)
        return weighted, {"loss": weighted, "x0_mse": ops.mean(per_image)}

    family = Family(
        name=name,
        networks={"teacher": teacher_copy, "unet": student.networks["unet"], "unet_ema": student.networks["unet_ema"]},
        phases=[Phase("student", ("unet",), loss, keras.optimizers.Adam(cfg.learning_rate, global_clipnorm=1.0))],
        noise=_grid_noise(student.spec, grid, cfg),
        ema={"unet_ema": "unet"},
        ema_decay=cfg.ema_decay,
        spec=_round_spec(student.spec, grid, cfg, clip_x0),
        batch_separable=True,  # the mean of per-image weighted x0 errors; the teacher runs in inference mode
    )
    return Distillation(family=family, student=student)


def next_round(
    previous: Distillation, teacher_grid: np.ndarray, cfg: DistillConfig, clip_x0: bool, name: str
) -> Distillation:
    """The round after ``previous``, on its networks and optimizer: what :func:`build_progressive` of the
    previous student would build, without building (or compiling a train step for) anything new.

    The previous student's EMA weights (what it samples with, and what was saved) become the teacher and the new
    student's start, the optimizer returns to its freshly built state, and only the noise function changes: the
    loss reads every grid-dependent coefficient from the batch, so the same compiled step (pass the previous
    round's stepper to the Trainer, whose ``fit`` re-reads the weights into it) trains every round."""
    spec = previous.student.spec
    grid = check_timesteps(teacher_grid, schedule_from_config(family_params(spec).ddpm).timesteps)
    networks = previous.family.networks
    for dest in ("teacher", "unet"):
        copy_network(networks["unet_ema"], networks[dest])
    for phase in previous.family.phases:
        reset_optimizer(phase.optimizer)
    family = replace(
        previous.family, name=name, noise=_grid_noise(spec, grid, cfg), spec=_round_spec(spec, grid, cfg, clip_x0)
    )
    return Distillation(family=family, student=previous.student)


def _round_spec(spec: Mapping[str, Any], grid: np.ndarray, cfg: DistillConfig, clip_x0: bool) -> dict[str, Any]:
    """The training family's spec: the student's, and what this round distils (its teacher grid)."""
    return {
        **spec,
        "distill": {
            "method": METHOD,
            "teacher_grid": [int(x) for x in grid],
            "weighting": cfg.weighting,
            "clip_x0": bool(clip_x0),
        },
    }


def _grid_noise(
    spec: Mapping[str, Any], grid: np.ndarray, cfg: DistillConfig
) -> Callable[[np.random.Generator, np.ndarray], dict[str, np.ndarray]]:
    """The round's noise function: per image a student step of ``grid`` (a checked teacher grid), its timesteps
    and the DDIM coefficients of the teacher's two steps and of the target, as batch entries the loss reads."""
    ddpm_cfg = family_params(spec).ddpm
    image_shape = tuple(spec["image_shape"])
    num_classes = int(spec["num_classes"])
    schedule = schedule_from_config(ddpm_cfg)
    steps = len(student_grid(grid))
    conditional = ddpm_cfg.conditional
    # The grid padded with -1 (clean) so that student step i reads positions 2i, 2i+1, 2i+2.
    padded = np.concatenate([grid, [-1]])

    def noise(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
        n = labels.shape[0]
        i = rng.integers(0, steps, size=n)
        t, t1, t2 = padded[2 * i], padded[2 * i + 1], padded[2 * i + 2]
        target = target_coefficients(schedule, t, t2, cfg.weighting)
        out = {
            "t": t.astype(np.int32),
            "t1": t1.astype(np.int32),
            "eps": rng.standard_normal((n, *image_shape), dtype=np.float32),
            **_feed(TEACHER_STEPS[0], ddim_coefficients(schedule, t, t1)),
            **_feed(TEACHER_STEPS[1], ddim_coefficients(schedule, t1, t2)),
            "target_z": target.target_z,
            "target_x": target.target_x,
            "weight": target.weight,
        }
        if conditional:  # the teacher's own label dropout, so the student keeps the null-label (guidance) branch
            out["cond_labels"] = drop_labels(rng, labels, ddpm_cfg.label_dropout, num_classes)
        return out

    return noise
