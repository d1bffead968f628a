"""Diffusion math, backend-agnostic: noise schedules, forward noising, DDPM and DDIM samplers.

Conventions
-----------
* Timesteps are 0-based indices ``t = 0 .. T-1``; ``alphas_cumprod[t]`` is abar_t, i.e. Ho et al.'s
  abar_{t+1}. ``alphas_cumprod_prev[0] = 1`` stands for the clean image.
* Schedules are float64 numpy arrays on the host. Per-step coefficients are computed there in
  float64 and applied to float32 tensors with ``keras.ops``, so the samplers work on every backend.
* Samplers never call a model directly: they call ``eps_fn(x_t, t_batch) -> eps`` where ``t_batch``
  is an int32 tensor of shape (B,). :func:`predictor_eps_fn` makes one from a (compiled) network
  call, with :func:`classifier_free_guidance` for a conditional model.
* The DDIM step is written once, :func:`ddim_update`, with the coefficients of
  :func:`ddim_coefficients` (float64 on the host, for any grid): the Python sampler, the exported
  graph (:mod:`imagegen.export.graph`) and the progressive-distillation target all apply it.
* All randomness comes from the ``numpy.random.Generator`` passed in, drawn on the host with
  ``rng.standard_normal(shape)`` (float64, then cast to float32), so a seed gives the same images on
  every backend. **Draw order** (shared by both samplers): first x_T (unless ``x_T`` is given), then
  one draw of ``shape`` per step that adds noise, i.e. every step except the last (DDPM), or every
  step except the last when ``eta > 0`` (DDIM; eta = 0 draws nothing after x_T).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
from keras import ops

from imagegen.config import ANCESTRAL_SAMPLER, DDIM_SAMPLER
from imagegen.errors import ConfigError

EpsFn = Callable[[Any, Any], Any]
"""``eps_fn(x_t, t_batch) -> eps``: x_t (B, H, W, C) float32, t_batch (B,) int32."""

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)``: called after each sampler step with the number of steps done (1-based)."""

COSINE_S = 0.008
COSINE_MAX_BETA = 0.999


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete noise schedule and the derived quantities, all float64 arrays of length T (read-only)."""

    kind: str
    betas: np.ndarray
    alphas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    """beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t), the variance of q(x_{t-1} | x_t, x_0)."""
    posterior_log_variance_clipped: np.ndarray
    """log beta_tilde_t with the t = 0 entry (which is 0) replaced by beta_tilde_1, as in Ho et al.'s code."""
    posterior_mean_coef1: np.ndarray
    """Coefficient of x_0 in the posterior mean."""
    posterior_mean_coef2: np.ndarray
    """Coefficient of x_t in the posterior mean."""

    @property
    def timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return int(self.betas.shape[0])


def linear_betas(timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Ho et al. 2020: betas evenly spaced from beta_start to beta_end (1e-4 .. 0.02 for T = 1000)."""
    return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)


def cosine_betas(timesteps: int, s: float = COSINE_S, max_beta: float = COSINE_MAX_BETA) -> np.ndarray:
    """Nichol & Dhariwal 2021, eq. 17: abar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) pi/2).

    beta_t = 1 - abar(t+1) / abar(t), clipped at ``max_beta`` to avoid the singularity at t = T.
    """
    steps = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return np.clip(1.0 - abar[1:] / abar[:-1], 0.0, max_beta)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).copy()
    a.setflags(write=False)
    return a


def make_schedule(
    kind: Literal["linear", "cosine"],
    timesteps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> NoiseSchedule:
    """Build a :class:`NoiseSchedule`. ``beta_start``/``beta_end`` are used by "linear" only."""
    if timesteps < 2:
        raise ConfigError(f"diffusion: timesteps={timesteps} must be at least 2")
    if kind == "linear":
        if not 0 < beta_start < beta_end < 1:
            raise ConfigError(f"diffusion: need 0 < beta_start < beta_end < 1, got {beta_start} and {beta_end}")
        betas = linear_betas(timesteps, beta_start, beta_end)
    elif kind == "cosine":
        betas = cosine_betas(timesteps)
    else:
        raise ConfigError(f"diffusion: unknown schedule {kind!r}; expected 'linear' or 'cosine'")

    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    log_var_clipped = np.log(np.concatenate([posterior_variance[1:2], posterior_variance[1:]]))
    return NoiseSchedule(
        kind=kind,
        betas=_frozen(betas),
        alphas=_frozen(alphas),
        alphas_cumprod=_frozen(abar),
        alphas_cumprod_prev=_frozen(abar_prev),
        sqrt_alphas_cumprod=_frozen(np.sqrt(abar)),
        sqrt_one_minus_alphas_cumprod=_frozen(np.sqrt(1.0 - abar)),
        sqrt_recip_alphas_cumprod=_frozen(np.sqrt(1.0 / abar)),
        sqrt_recipm1_alphas_cumprod=_frozen(np.sqrt(1.0 / abar - 1.0)),
        posterior_variance=_frozen(posterior_variance),
        posterior_log_variance_clipped=_frozen(log_var_clipped),
        posterior_mean_coef1=_frozen(betas * np.sqrt(abar_prev) / (1.0 - abar)),
        posterior_mean_coef2=_frozen((1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)),
    )


def schedule_from_config(cfg: Any) -> NoiseSchedule:
    """The schedule described by a :class:`imagegen.config.DDPMConfig`."""
    return make_schedule(cfg.schedule, cfg.timesteps, cfg.beta_start, cfg.beta_end)


# --------------------------------------------------------------------------------------------------
# Forward process


def _gather(values: np.ndarray, t: Any, like: Any) -> Any:
    """values[t] as a tensor of shape (B, 1, ..., 1) broadcastable against ``like`` (B, ...)."""
    table = ops.convert_to_tensor(np.asarray(values, dtype=np.float32))
    picked = ops.take(table, ops.cast(t, "int32"), axis=0)
    picked = ops.reshape(picked, (-1,) + (1,) * (len(like.shape) - 1))
    return ops.cast(picked, like.dtype)


def q_sample(schedule: NoiseSchedule, x0: Any, t: Any, eps: Any) -> Any:
    """Sample q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps; t is an int tensor of shape (B,)."""
    x0 = ops.convert_to_tensor(x0)
    eps = ops.cast(eps, x0.dtype)
    return (
        _gather(schedule.sqrt_alphas_cumprod, t, x0) * x0 + _gather(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * eps
    )


def predict_x0(schedule: NoiseSchedule, x_t: Any, t: Any, eps: Any) -> Any:
    """Invert q_sample: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t). t: int, or int tensor (B,)."""
    x_t = ops.convert_to_tensor(x_t)
    eps = ops.cast(eps, x_t.dtype)
    if isinstance(t, int | np.integer):
        return float(schedule.sqrt_recip_alphas_cumprod[t]) * x_t - float(schedule.sqrt_recipm1_alphas_cumprod[t]) * eps
    return (
        _gather(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t
        - _gather(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
    )


# --------------------------------------------------------------------------------------------------
# Samplers


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> Any:
    return ops.convert_to_tensor(rng.standard_normal(shape).astype(np.float32))


def _start(rng: np.random.Generator, shape: tuple[int, ...], x_T: Any) -> Any:
    if x_T is None:
        return _noise(rng, shape)
    x = ops.cast(ops.convert_to_tensor(x_T), "float32")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x.shape)}, expected {tuple(shape)}")
    return x


def _eps(eps_fn: EpsFn, x: Any, t: int) -> Any:
    t_batch = ops.convert_to_tensor(np.full((x.shape[0],), t, dtype=np.int32))
    return ops.cast(eps_fn(x, t_batch), "float32")


def ddpm_sample(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    rng: np.random.Generator,
    progress: ProgressFn | None = None,
    *,
    variance: Literal["beta", "posterior"] = "beta",
    clip_x0: bool = False,
    x_T: Any = None,
) -> Any:
    """Ancestral sampling, Ho et al. 2020 Algorithm 2, over all T steps; returns x_0 (float32).

    x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, with no noise at the
    last step. ``variance="beta"`` is sigma_t^2 = beta_t (Algorithm 2, the default);
    ``"posterior"`` is sigma_t^2 = beta_tilde_t, the variance of q(x_{t-1} | x_t, x_0), which is what
    DDIM with eta = 1 and steps = T reproduces. With ``clip_x0`` the mean is instead the posterior
    mean of the predicted x_0 clipped to [-1, 1] (identical when nothing is clipped).
    """
    if variance not in ("beta", "posterior"):
        raise ValueError(f"variance must be 'beta' or 'posterior', got {variance!r}")
    big_t = schedule.timesteps
    x = _start(rng, shape, x_T)
    for i, t in enumerate(range(big_t - 1, -1, -1)):
        eps = _eps(eps_fn, x, t)
        if clip_x0:
            x0 = ops.clip(predict_x0(schedule, x, t, eps), -1.0, 1.0)
            x_next = float(schedule.posterior_mean_coef1[t]) * x0 + float(schedule.posterior_mean_coef2[t]) * x
        else:
            x_coef = 1.0 / math.sqrt(schedule.alphas[t])
            eps_coef = schedule.betas[t] / (math.sqrt(schedule.alphas[t]) * schedule.sqrt_one_minus_alphas_cumprod[t])
            x_next = x_coef * x - float(eps_coef) * eps
        if t > 0:
            var = schedule.betas[t] if variance == "beta" else schedule.posterior_variance[t]
            x_next = x_next + math.sqrt(var) * _noise(rng, shape)
        x = x_next
        if progress is not None:
            progress(i + 1, big_t)
    return x


def ddim_timesteps(timesteps: int, steps: int) -> np.ndarray:
    """The descending timesteps DDIM visits: ``np.linspace(T-1, 0, steps).round()``.

    Evenly spaced, always starting at T-1 and (for steps >= 2) ending at 0; distinct because the
    spacing is >= 1 when steps <= T. steps = T gives every timestep; steps = 1 gives [T-1].
    """
    if not 1 <= steps <= timesteps:
        raise ConfigError(f"ddim: steps={steps} must be between 1 and the schedule's T={timesteps}")
    return np.linspace(timesteps - 1, 0, steps).round().astype(np.int64)


def check_timesteps(timesteps: Sequence[int], schedule_timesteps: int) -> np.ndarray:
    """Validate an explicit DDIM grid; return it as int64.

    The grid must be a non-empty list of integers, strictly descending, in [0, T); a
    :class:`ConfigError` names what is wrong. Any such grid is a valid DDIM sampler; the step after
    its last entry goes to the clean image. A progressive-distillation student samples on such a
    grid (every other timestep of its teacher's, see :mod:`imagegen.distill.progressive`).
    """
    raw = np.asarray(timesteps)
    if raw.ndim != 1 or raw.size == 0:
        raise ConfigError(f"ddim: timesteps must be a non-empty list of integers, got {raw.tolist()!r}")
    whole = raw.dtype.kind in "iu" or (
        raw.dtype.kind == "f" and bool(np.all(np.isfinite(raw) & (raw == np.round(raw))))
    )
    if not whole:
        raise ConfigError(f"ddim: timesteps must be integers, got {raw.tolist()!r}")
    ts = raw.astype(np.int64)
    big_t = schedule_timesteps
    if ts.min() < 0 or ts.max() >= big_t:
        raise ConfigError(f"ddim: timesteps {ts.tolist()} must lie in [0, {big_t}) (the schedule's T={big_t})")
    if np.any(np.diff(ts) >= 0):
        raise ConfigError(f"ddim: timesteps {ts.tolist()} must be strictly decreasing (from noisy to clean)")
    return ts


def ddim_grid(schedule_timesteps: int, steps: int | None = None, timesteps: Sequence[int] | None = None) -> np.ndarray:
    """The grid a DDIM sampler visits: ``timesteps`` (checked) when given, else evenly spaced."""
    if timesteps is not None:
        return check_timesteps(timesteps, schedule_timesteps)
    if steps is None:
        raise ConfigError("ddim: give the number of steps or an explicit list of timesteps")
    return ddim_timesteps(schedule_timesteps, steps)


@dataclass(frozen=True)
class DDIMCoefficients:
    """The constants of DDIM updates x_t -> x_next (Song et al. 2021, eq. 12), float64 on the host.

    Each field holds one value per update: an array over a sampler's grid (:func:`ddim_plan`) or
    over a batch of examples (progressive distillation), or a Python float for one step
    (:meth:`at`). :func:`ddim_update` applies them; nothing else spells the update out.
    """

    sqrt_recip_abar: Any
    """x0 = sqrt_recip_abar * x_t - sqrt_recipm1_abar * eps (the x0 prediction)."""
    sqrt_recipm1_abar: Any
    sqrt_abar: Any
    """eps re-derived from a clipped x0: (x_t - sqrt_abar * x0) * inv_sqrt_one_minus_abar."""
    inv_sqrt_one_minus_abar: Any
    sqrt_abar_next: Any
    """x_next = sqrt_abar_next * x0 + direction * eps (+ sigma * z)."""
    direction: Any
    x_coef: Any
    """Without clipping, the x0 prediction folded in: x_next = x_coef * x_t + eps_coef * eps."""
    eps_coef: Any
    sigma: Any
    """Standard deviation of the noise added (0 for eta = 0)."""

    def at(self, i: int) -> DDIMCoefficients:
        """Update ``i`` as Python floats (which keras and TensorFlow apply as float32 scalars)."""
        return self.map(lambda v: float(v[i]))

    def map(self, fn: Callable[[Any], Any]) -> DDIMCoefficients:
        """Every field converted by ``fn`` (e.g. to float32, or to tensors shaped (B, 1, 1, 1))."""
        return DDIMCoefficients(**{k: fn(v) for k, v in self.items()})

    def items(self) -> list[tuple[str, Any]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


def ddim_coefficients(schedule: NoiseSchedule, t: Any, t_next: Any, eta: float = 0.0) -> DDIMCoefficients:
    """Coefficients of the DDIM updates from timesteps ``t`` to ``t_next`` (-1: the clean image).

    ``t`` and ``t_next`` are int arrays (or ints) of the same shape with t > t_next; sigma is
    eta sqrt((1 - abar_next) / (1 - abar_t)) sqrt(1 - abar_t / abar_next) (eq. 16).
    """
    t = np.asarray(t, dtype=np.int64)
    t_next = np.asarray(t_next, dtype=np.int64)
    abar = schedule.alphas_cumprod
    abar_t = abar[t]
    abar_next = np.where(t_next < 0, 1.0, abar[np.maximum(t_next, 0)])
    sigma = eta * np.sqrt((1.0 - abar_next) / (1.0 - abar_t)) * np.sqrt(np.maximum(1.0 - abar_t / abar_next, 0.0))
    direction = np.sqrt(np.maximum(1.0 - abar_next - sigma * sigma, 0.0))
    return DDIMCoefficients(
        sqrt_recip_abar=schedule.sqrt_recip_alphas_cumprod[t],
        sqrt_recipm1_abar=schedule.sqrt_recipm1_alphas_cumprod[t],
        sqrt_abar=np.sqrt(abar_t),
        inv_sqrt_one_minus_abar=1.0 / np.sqrt(1.0 - abar_t),
        sqrt_abar_next=np.sqrt(abar_next),
        direction=direction,
        x_coef=np.sqrt(abar_next / abar_t),
        eps_coef=direction - np.sqrt(abar_next) * np.sqrt(1.0 - abar_t) / np.sqrt(abar_t),
        sigma=sigma,
    )


def ddim_plan(schedule: NoiseSchedule, grid: np.ndarray, eta: float = 0.0) -> DDIMCoefficients:
    """The coefficients of every step of a DDIM sampler on ``grid`` (the last one ends clean)."""
    grid = np.asarray(grid, dtype=np.int64)
    return ddim_coefficients(schedule, grid, np.concatenate([grid[1:], [-1]]), eta)


def ddim_update(x: Any, eps: Any, step: DDIMCoefficients, clip_x0: bool, noise: Any = None) -> Any:
    """One DDIM step: x_next = sqrt(abar_next) x0 + sqrt(1 - abar_next - sigma^2) eps + sigma z.

    With ``clip_x0`` the predicted x0 is clipped to [-1, 1] and eps is re-derived from it (which
    keeps eta = 1, steps = T equal to DDPM with the posterior variance and clipping). ``noise`` (z)
    is added only when given. Works on any backend's tensors, eagerly or traced into a graph.
    """
    if clip_x0:
        x0 = ops.clip(step.sqrt_recip_abar * x - step.sqrt_recipm1_abar * eps, -1.0, 1.0)
        eps = (x - step.sqrt_abar * x0) * step.inv_sqrt_one_minus_abar
        x_next = step.sqrt_abar_next * x0 + step.direction * eps
    else:
        x_next = step.x_coef * x + step.eps_coef * eps
    if noise is not None:
        x_next = x_next + step.sigma * noise
    return x_next


def ddim_sample(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    rng: np.random.Generator,
    steps: int | None = None,
    eta: float = 0.0,
    clip_x0: bool = False,
    progress: ProgressFn | None = None,
    x_T: Any = None,
    timesteps: Sequence[int] | None = None,
) -> Any:
    """DDIM (Song et al. 2021) on :func:`ddim_grid`; returns x_0 (float32).

    The grid is ``timesteps`` when given (it overrides ``steps``), else evenly spaced ``steps``.
    Each step is :func:`ddim_update` with the coefficients of :func:`ddim_plan`. eta = 0 is
    deterministic given x_T; eta = 1 with steps = T is DDPM with the posterior variance.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    grid = ddim_grid(schedule.timesteps, steps, timesteps)
    plan = ddim_plan(schedule, grid, eta)
    x = _start(rng, shape, x_T)
    for i, t in enumerate(grid):
        eps = _eps(eps_fn, x, int(t))
        last = i == len(grid) - 1
        noise = _noise(rng, shape) if eta > 0 and not last else None
        x = ddim_update(x, eps, plan.at(i), clip_x0, noise)
        if progress is not None:
            progress(i + 1, len(grid))
    return x


def run_sampler(
    eps_fn: Callable[[Any, Any], Any],
    schedule: Any,
    shape: tuple[int, ...],
    rng: np.random.Generator,
    sampler: str,
    *,
    steps: int,
    eta: float,
    timesteps: Sequence[int] | None,
    **common: Any,
) -> Any:
    """x_0 from DDPM ancestral (all T) or DDIM sampling: the sampler choice shared by every diffusion family."""
    if sampler == ANCESTRAL_SAMPLER:
        return ddpm_sample(eps_fn, schedule, shape, rng, **common)
    if sampler == DDIM_SAMPLER:
        return ddim_sample(eps_fn, schedule, shape, rng, steps=steps, eta=eta, timesteps=timesteps, **common)
    raise ValueError(f"unknown sampler {sampler!r}; expected 'ddpm' or 'ddim'")


# --------------------------------------------------------------------------------------------------
# Classifier-free guidance


def classifier_free_guidance(eps_given: Callable[[Any], Any], labels: Any, null_labels: Any, scale: float) -> Any:
    """Ho & Salimans 2022: eps_u + s (eps_c - eps_u), from ``eps_given(labels) -> eps``.

    s = 1 is the conditional prediction alone (one pass), s = 0 the unconditional one (one pass);
    otherwise two passes of batch B, conditional first. Two passes rather than one of 2B: the
    exported graph keeps a plain dynamic batch and the images stay those of earlier releases.
    """
    if scale == 1.0:
        return eps_given(labels)
    if scale == 0.0:
        return eps_given(null_labels)
    eps_cond = eps_given(labels)
    eps_uncond = eps_given(null_labels)
    return eps_uncond + scale * (eps_cond - eps_uncond)


def predictor_eps_fn(
    predict: Callable[..., Any],
    labels: np.ndarray | None = None,
    null_label: int | None = None,
    guidance_scale: float = 1.0,
) -> EpsFn:
    """An ``eps_fn`` for the samplers from ``predict(x_t, t[, labels]) -> eps`` (t float32).

    With ``labels`` the model is conditional and sampled with classifier-free guidance: class labels (B,)
    with ``null_label`` the number of classes, or caption token ids (B, L) with ``null_label`` the pad id
    (the null caption is every position ``null_label``).
    """
    if labels is None:
        return lambda x, t: ops.cast(predict(x, ops.cast(t, "float32")), "float32")
    if null_label is None:
        raise ValueError("predictor_eps_fn: null_label is required with labels (num_classes)")
    labels = np.asarray(labels)
    cond = ops.convert_to_tensor(labels.astype(np.int32))
    null = ops.convert_to_tensor(np.full(labels.shape, null_label, dtype=np.int32))

    def eps_fn(x: Any, t: Any) -> Any:
        t = ops.cast(t, "float32")
        return classifier_free_guidance(
            lambda given: ops.cast(predict(x, t, given), "float32"), cond, null, guidance_scale
        )

    return eps_fn
