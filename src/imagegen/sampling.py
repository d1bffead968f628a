"""Which sampler settings a model is drawn with: the one place that decides it.

Three sources, later ones winning:

1. ``params.sample`` (sampler, steps, eta, guidance scale, x0 clipping), the project-wide defaults;
2. the model's own ``sampling`` record in its ``model.json`` (a progressively distilled student stores the
   DDIM grid it was trained for: ``{"sampler": "ddim", "steps": 4, "timesteps": [...], "eta": 0.0}``);
3. explicit overrides (``imagegen sample --steps 8``, keyword arguments to ``generate_images``); ``None``
   values mean "not given".

An explicit ``steps`` (or ``sampler="ddpm"``) without explicit ``timesteps`` drops the model's own grid, so
``--steps 8`` means DDIM's evenly spaced 8 steps. The result always carries a ``timesteps`` key (``None`` when
the grid follows from ``steps``), so resolving an already resolved dict again changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SAMPLER_KEYS = ("sampler", "steps", "eta", "guidance_scale", "clip_x0", "timesteps")


def sampler_kwargs(
    params: Any = None,
    meta: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``family_module("ddpm").generate`` (other families ignore them).

    ``params`` is a :class:`imagegen.config.Params` (or None: no project defaults, the sampler's own apply),
    ``meta`` a model's ``model.json`` contents, ``overrides`` explicit choices (None values are ignored).
    """
    kwargs: dict[str, Any] = {}
    if params is not None:
        s = params.sample
        kwargs.update(
            sampler=s.sampler, steps=s.steps, eta=s.eta, guidance_scale=s.guidance_scale, clip_x0=s.clip_x0
        )
    kwargs["timesteps"] = None
    own = (meta or {}).get("sampling")
    if own:
        kwargs.update({k: v for k, v in own.items() if k in SAMPLER_KEYS and v is not None})
        if own.get("timesteps") is not None:
            kwargs["timesteps"] = [int(t) for t in own["timesteps"]]
    given = {k: v for k, v in (overrides or {}).items() if v is not None or k == "timesteps"}
    if ("steps" in given or given.get("sampler") == "ddpm") and "timesteps" not in given:
        kwargs["timesteps"] = None
    kwargs.update(given)
    return kwargs
