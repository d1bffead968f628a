"""Seeding a run: Keras' initialisers, Python/numpy/backend RNGs, deterministic TensorFlow ops."""

from __future__ import annotations

import keras


def seed_everything(seed: int) -> None:
    """Seed Keras' initialisers (and Python/numpy/backend RNGs); make TF ops deterministic."""
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
