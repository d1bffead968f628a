"""Sampling speed of trained models: images/s with the same n and the same DDIM steps, one JSON line each.

Compares e.g. the pixel DDPM with the latent diffusion model (which adds the VAE decoder but runs its U-Net
on a 4x4 latent grid)::

    python bench/sample_speed.py --model models/ddpm models/ldm --n 256 --steps 50

Each model is warmed up once (the predictor's compilation) on a batch of the same size, then timed over
``--repeats`` draws; the median is reported, with the load average (figures on a busy machine are not
comparable with an idle one's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from imagegen import startup

startup.set_tensorflow_defaults()  # the kernels the `imagegen` command samples on (before TensorFlow loads)

from imagegen.artifact import load_model  # noqa: E402
from imagegen.sampling import make_sampler, resolve_settings  # noqa: E402


def bench(model_dir: Path, n: int, steps: int, repeats: int) -> dict[str, object]:
    loaded = load_model(model_dir)
    sample = make_sampler(loaded.family, resolve_settings(None, loaded.meta, {"sampler": "ddim", "steps": steps}))
    sample(n, np.random.default_rng(0))  # warm-up: compiles the predictor for this batch
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        sample(n, np.random.default_rng(i + 1))
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "model": str(model_dir),
        "family": loaded.name,
        "n": n,
        "ddim_steps": steps,
        "seconds": round(seconds, 3),
        "images_per_sec": round(n / seconds, 1),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", type=Path, required=True)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for model_dir in args.model:
        print(json.dumps(bench(model_dir, args.n, args.steps, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
