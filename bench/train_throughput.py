"""Training throughput per family: images/s and ms/step at given batch sizes, one JSON line each.

Runs on whatever Keras backend (KERAS_BACKEND) and device is present, on random data of the given shape
(throughput does not depend on pixel values). Examples::

    python bench/train_throughput.py --family ddpm --batch-sizes 64 128 --image-size 16
    KERAS_BACKEND=jax python bench/train_throughput.py --family all --batch-sizes 128 512 --image-size 32
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from imagegen import startup

startup.set_tensorflow_defaults()  # the kernels the `imagegen` command trains on (before TensorFlow loads)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from imagegen.config import load_params  # noqa: E402
from imagegen.data.loader import BatchStream  # noqa: E402
from imagegen.data.processed import Split  # noqa: E402
from imagegen.training.families import FAMILIES, build_family, family_spec  # noqa: E402
from imagegen.training.precision import (  # noqa: E402
    accelerator,
    cpu_math_in_effect,
    dtype_policy,
    resolve_cpu_math,
    resolve_jit,
    resolve_policy,
)
from imagegen.training.steppers import make_stepper  # noqa: E402


@dataclass
class Prepared:
    """A family's stepper ready to train on random data: ``step()`` runs one train step on ``next_batch()``."""

    family: Any
    stepper: Any
    params: Any
    policy: str
    next_batch: Callable[[], dict]
    cpu_math: str  # the convolutions' math in this process (train.cpu_math, as the CPU and the order allow)

    def step(self) -> dict:
        return self.stepper.step(self.next_batch())


def prepare(family_name: str, batch: int, size: int, channels: int, overrides: list[str]) -> Prepared:
    params = load_params(None, overrides)
    # As `imagegen train` does; oneDNN reads it at this process's first convolution (the probe's, here), so the
    # first family prepared decides for the process (cpu_math in each result says what ran: one family per process).
    with startup.cpu_math_requested(resolve_cpu_math(params.train.cpu_math, family_spec(family_name))):
        cpu_math = cpu_math_in_effect()
    keras.utils.set_random_seed(0)
    policy = resolve_policy(params.train.mixed_precision)
    with dtype_policy(policy):
        family = build_family(family_name, params, (size, size, channels), 10)
    stepper = make_stepper(family, jit_compile=params.train.jit_compile)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(max(batch * 4, 512), size, size, channels), dtype=np.uint8)
    stream = BatchStream(Split(images, rng.integers(0, 10, len(images))), batch, seed=0)

    def next_batch() -> dict:
        b = next(stream)
        return {"images": b.images, "labels": b.labels, **family.noise(rng, b.labels)}

    return Prepared(family, stepper, params, policy, next_batch, cpu_math)


def time_steps(step: Callable[[], Mapping[str, Any]], n: int) -> float:
    """Seconds for ``n`` calls of ``step``; the last call's metrics are read back (waits for the device)."""
    t0 = time.perf_counter()
    metrics: Mapping[str, Any] = {}
    for _ in range(n):
        metrics = step()
    for v in metrics.values():
        float(np.asarray(v))
    return time.perf_counter() - t0


def measure(
    family_name: str, batch: int, size: int, channels: int, steps: int, warmup: int, overrides: list[str]
) -> dict:
    p = prepare(family_name, batch, size, channels, overrides)
    compile_s = time_steps(p.step, warmup)
    seconds = time_steps(p.step, steps)
    return {
        "family": family_name,
        "backend": keras.backend.backend(),
        "device": accelerator(),
        "dtype_policy": p.policy,
        "cpu_math": p.cpu_math,
        "jit_compile": resolve_jit(p.params.train.jit_compile),
        "batch_size": batch,
        "image_size": size,
        "channels": channels,
        "parameters": p.family.trainable_count(),
        "steps": steps,
        "images_per_sec": round(batch * steps / seconds, 1),
        "ms_per_step": round(1000 * seconds / steps, 2),
        "warmup_s": round(compile_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="all", choices=[*FAMILIES, "all"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64])
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="param override")
    args = ap.parse_args()
    families = FAMILIES if args.family == "all" else (args.family,)
    for fam in families:
        for batch in args.batch_sizes:
            print(
                json.dumps(
                    measure(fam, batch, args.image_size, args.channels, args.steps, args.warmup, args.overrides)
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
