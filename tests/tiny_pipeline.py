"""Params that take a VAE through every stage (ingest, train, train-features, evaluate, export) in seconds:
8x8 images, a few steps, a small evaluation and the float32 TFLite file only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

TINY_VAE_PIPELINE = [
    "data.image_size=8",
    "vae.steps=3",
    "vae.base_filters=4",
    "train.batch_size=16",
    "train.jit_compile=false",
    "evaluate.n_samples=24",
    "evaluate.feature_epochs=1",
    "export.tflite_variants=[float32]",
]


def run_vae_stages(root: Path, invoke: Callable[..., Any], evaluation: str, export: Sequence[str]) -> None:
    """Ingest, train the VAE, train the feature classifier, evaluate into ``evaluation`` and export with the
    ``export`` arguments, each through ``invoke(*args)`` (the `imagegen` CLI) in ``root``; every one must pass."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("IMAGEGEN_CACHE_DIR", str(root / "cache"))
        for args in (
            ["ingest"],
            ["train", "vae"],
            ["train-features"],
            ["evaluate", "--model", "models/vae", "--out", evaluation],
            ["export", "--model", "models/vae", *export],
        ):
            result = invoke(*args)
            assert result.exit_code == 0, (args, result.output)
