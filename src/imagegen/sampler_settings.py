"""How a model is sampled: :class:`SamplerSettings`, resolved once and handed to a family's ``generate``.

Three sources, later ones winning (:meth:`SamplerSettings.resolve`):

1. the project's ``sample`` params section (sampler, steps, eta, guidance scale, x0 clipping, truncation);
2. the model's own ``sampling`` record in its ``model.json`` (a progressively distilled student stores the
   DDIM grid it was trained for: ``{"sampler": "ddim", "steps": 4, "timesteps": [...], "eta": 0.0}``);
3. explicit overrides (``imagegen sample --steps 8``, keyword arguments to ``generate_images``, a serving
   request's params); ``None`` values mean "not given".

An explicit ``steps`` (or ``sampler="ddpm"``) without explicit ``timesteps`` drops the model's own grid, so
``--steps 8`` means DDIM's evenly spaced 8 steps. Resolving already resolved settings again changes nothing.

Each family reads the fields that concern it (diffusion families the sampler, steps, eta, guidance, clipping
and grid; a style-based generator the truncation) and ignores the others. This module imports no Keras.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from imagegen.config import ANCESTRAL_SAMPLER


@dataclass(frozen=True)
class SamplerSettings:
    """One model's sampling choices. The defaults are those of a model sampled without project params."""

    sampler: str = "ddim"  # "ddim" or "ddpm" (ancestral, all T steps)
    steps: int = 50  # DDIM steps (ignored by DDPM ancestral sampling)
    eta: float = 0.0  # DDIM stochasticity (0: deterministic)
    guidance_scale: float = 1.0  # classifier-free guidance (1: the conditional prediction alone)
    clip_x0: bool = True  # clip each predicted x0 to [-1, 1] (pixel-space diffusion only)
    timesteps: tuple[int, ...] | None = None  # an explicit descending DDIM grid; overrides ``steps``
    truncation: float = 1.0  # truncation of a style-based generator's w towards its mean (1: none)

    def __post_init__(self) -> None:
        if self.timesteps is not None:
            object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The field names: what a ``sampling`` record, a CLI flag set or a request may give."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def resolve(
        cls,
        defaults: Any = None,
        own: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> SamplerSettings:
        """The settings from the ``sample`` params section ``defaults`` (or None), a model's ``own`` ``sampling``
        record and explicit ``overrides`` (None values ignored), later ones winning (see the module docstring)."""
        keys = cls.keys()
        values: dict[str, Any] = {}
        if defaults is not None:
            values.update({k: getattr(defaults, k) for k in keys if k != "timesteps" and hasattr(defaults, k)})
        values.update({k: v for k, v in (own or {}).items() if k in keys and v is not None})
        given = {k: v for k, v in (overrides or {}).items() if k in keys and (v is not None or k == "timesteps")}
        if ("steps" in given or given.get("sampler") == ANCESTRAL_SAMPLER) and "timesteps" not in given:
            values["timesteps"] = None
        values.update(given)
        return cls(**values)

    def with_(self, **changes: Any) -> SamplerSettings:
        """A copy with ``changes`` applied (e.g. one guidance scale of a sweep)."""
        return replace(self, **changes)

    def record(self) -> dict[str, Any]:
        """The settings as plain JSON values (``timesteps`` a list or None)."""
        out = asdict(self)
        out["timesteps"] = None if self.timesteps is None else list(self.timesteps)
        return out
