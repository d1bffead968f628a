"""The embedded offline default: scikit-learn's bundled handwritten digits (1,797 real 8x8 images).

They ship inside the installed scikit-learn package, so this source never touches the network.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np

from imagegen.config import DataConfig
from imagegen.data.processed import Dataset, Split
from imagegen.data.transform import stratified_split


def load_digits(cfg: DataConfig, seed: int) -> Dataset:
    import sklearn
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    # Pixel values are 0..16; map to 0..255 exactly (16 -> 255).
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_split(labels, cfg.test_fraction, seed)
    raw_file = resources.files("sklearn.datasets") / "data" / "digits.csv.gz"
    raw_md5 = hashlib.md5(raw_file.read_bytes()).hexdigest()
    return Dataset(
        name="digits",
        splits={
            "train": Split(images[train_idx], labels[train_idx]),
            "test": Split(images[test_idx], labels[test_idx]),
        },
        class_names=[str(i) for i in range(10)],
        source=f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__}, UCI optical digits)",
        files=[{"name": "sklearn/datasets/data/digits.csv.gz", "md5": raw_md5}],
    )
