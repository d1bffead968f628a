"""The feature extractor: a small CNN classifier trained by the pipeline on the real training split.

Its penultimate layer gives the features FID, KID and precision/recall are computed on, and its softmax gives
class coverage, so evaluation needs no downloaded weights. (InceptionV3 features are an option only when the
user has ImageNet weights locally: ``evaluate.inception_weights``.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from imagegen.config import EvaluateConfig
from imagegen.data.loader import to_unit_range
from imagegen.errors import DataError
from imagegen.fileio import atomic_path, md5_file, write_json
from imagegen.outputs import check_output, write_marker
from imagegen.profiling import phase

MODEL_FILE = "model.json"
WEIGHTS_FILE = "classifier.weights.h5"
FEATURE_LAYER = "features"


def build_classifier(
    image_shape: tuple[int, int, int], num_classes: int, width: int, feature_dim: int, logits: bool = False
) -> keras.Model:
    """Conv-BN-ReLU x4 (two stride-2), global average pool, a ``features`` Dense layer, softmax head.

    ``logits``: the same layers and weights with the head's softmax left out (knowledge distillation).
    """
    x = inputs = keras.Input(shape=image_shape, name="image")
    for i, (filters, stride) in enumerate([(width, 1), (width, 2), (2 * width, 1), (2 * width, 2)]):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"conv{i}")(x)
        # momentum 0.9: the moving statistics must settle within a few hundred steps on small datasets
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    feats = layers.Dense(feature_dim, activation="relu", name=FEATURE_LAYER)(x)
    h = layers.Dropout(0.3, name="dropout")(feats)
    probs = layers.Dense(num_classes, activation=None if logits else "softmax", dtype="float32", name="probs")(h)
    return keras.Model(inputs, probs, name="feature_classifier")


@dataclass
class FeatureExtractor:
    """Embeds uint8 images: ``features`` (penultimate activations) and class ``probs``."""

    path: Path
    meta: dict[str, Any]
    classifier: keras.Model

    def __post_init__(self) -> None:
        self._both = keras.Model(
            self.classifier.inputs, [self.classifier.get_layer(FEATURE_LAYER).output, self.classifier.output]
        )

    @property
    def fingerprint(self) -> str:
        return self.meta["weights_md5"]

    @phase("features.embed", "work")
    def embed(self, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images)
        expected = tuple(self.meta["image_shape"])
        if images.dtype != np.uint8 or images.shape[1:] != expected:
            raise DataError(
                f"images: expected uint8 (N, {', '.join(map(str, expected))}) like the feature extractor's "
                f"training data ({self.path}), got {images.dtype} {images.shape}"
            )
        feats, probs = [], []
        for start in range(0, len(images), batch_size):
            f, p = self._both.predict_on_batch(to_unit_range(images[start : start + batch_size]))
            feats.append(np.asarray(f, dtype=np.float64))
            probs.append(np.asarray(p, dtype=np.float64))
        return np.concatenate(feats), np.concatenate(probs)


def save_extractor(classifier: keras.Model, out_dir: Path, meta: dict[str, Any]) -> Path:
    check_output(out_dir, "features")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_marker(out_dir, "features")
    (out_dir / MODEL_FILE).unlink(missing_ok=True)
    with atomic_path(out_dir / WEIGHTS_FILE, suffix=".weights.h5") as tmp:
        classifier.save_weights(tmp)
    write_json(out_dir / MODEL_FILE, {**meta, "weights_md5": md5_file(out_dir / WEIGHTS_FILE)})
    return out_dir


META_KEYS = ("image_shape", "num_classes", "width", "feature_dim", "weights_md5", "dataset", "scores")


def read_extractor_meta(path: Path) -> dict[str, Any]:
    """``model.json`` of the feature extractor in ``path``; a missing, non-JSON or incomplete one is a
    :class:`DataError` naming it (evaluation cannot go on without it)."""
    meta_path = path / MODEL_FILE
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: no feature extractor here; run `imagegen train-features` first")
    rerun = "expected the model.json of `imagegen train-features` (re-run it)"
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc}); {rerun}") from None
    missing = [k for k in META_KEYS if k not in meta] if isinstance(meta, dict) else list(META_KEYS)
    if missing:
        raise DataError(f"{meta_path}: missing {', '.join(missing)}; {rerun}")
    return meta


@phase("features.load", "io")
def load_extractor(path: Path | str) -> FeatureExtractor:
    """The feature extractor saved in ``path``; unreadable files are a :class:`DataError` naming them."""
    path = Path(path)
    meta = read_extractor_meta(path)
    classifier = build_classifier(tuple(meta["image_shape"]), meta["num_classes"], meta["width"], meta["feature_dim"])
    try:
        classifier.load_weights(path / WEIGHTS_FILE)
    except Exception as exc:  # h5py/keras raise OSError, ValueError, KeyError... for a missing or damaged file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{path / WEIGHTS_FILE}: unreadable weights ({reason}); "
            "expected the complete .weights.h5 of `imagegen train-features` (re-run it)"
        ) from None
    return FeatureExtractor(path, meta, classifier)


def train_classifier(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    cfg: EvaluateConfig,
    seed: int,
    verbose: int = 0,
) -> tuple[keras.Model, dict[str, float]]:
    """Fit the classifier with Keras' own ``fit`` (backend-agnostic); returns it and its test accuracy."""
    keras.utils.set_random_seed(seed)
    model = build_classifier(tuple(train_images.shape[1:]), num_classes, cfg.feature_width, cfg.feature_dim)
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.feature_learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(
        to_unit_range(np.asarray(train_images)),
        np.asarray(train_labels),
        batch_size=128,
        epochs=cfg.feature_epochs,
        shuffle=True,
        verbose=verbose,
    )
    test_loss, test_acc = model.evaluate(
        to_unit_range(np.asarray(test_images)), np.asarray(test_labels), batch_size=512, verbose=0
    )
    return model, {
        "train_accuracy": float(history.history["accuracy"][-1]),
        "test_accuracy": float(test_acc),
        "test_loss": float(test_loss),
    }
