"""Stage ``train_features``: the real training split -> the feature extractor used by ``evaluate``."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from imagegen.config import Params
from imagegen.data.processed import ProcessedDataset
from imagegen.evaluation.features import save_extractor, train_classifier
from imagegen.fileio import write_json
from imagegen.outputs import check_output
from imagegen.tracking import TrackingProcess, start_run
from imagegen.training.seeding import seed_everything


def run_train_features(
    params: Params,
    data_dir: Path | None = None,
    out_dir: Path | None = None,
    verbose: int = 0,
    tracking: TrackingProcess | None = None,
) -> Path:
    """Train the classifier on the train split, measure it on the test split, save it; return its folder."""
    cfg = params.evaluate
    data_dir = Path(data_dir) if data_dir is not None else params.data.output_dir
    out_dir = Path(out_dir) if out_dir is not None else cfg.features_dir
    check_output(out_dir, "features", inputs=[data_dir])  # before training, not after
    dataset = ProcessedDataset.open(data_dir)
    train, test = dataset.split("train", mmap=False), dataset.split("test", mmap=False)
    seed_everything(params.seed)
    with start_run(
        params.tracking,
        process=tracking,
        run_name="train-features",
        stage="train_features",
        dataset_hash=dataset.content_hash,
        params={f"evaluate.{k}": v for k, v in cfg.model_dump(mode="json").items()},
    ) as run:
        classifier, scores = train_classifier(
            train.images, train.labels, test.images, test.labels, dataset.num_classes, cfg, params.seed, verbose
        )
        meta = {
            "format_version": 1,
            "image_shape": list(dataset.image_shape),
            "num_classes": dataset.num_classes,
            "class_names": dataset.class_names,
            "width": cfg.feature_width,
            "feature_dim": cfg.feature_dim,
            "dataset": {"name": dataset.manifest["dataset"], "content_hash": dataset.content_hash},
            "scores": scores,
            "backend": keras.backend.backend(),
        }
        save_extractor(classifier, out_dir, meta)
        write_json(params.train.reports_dir / "train_features" / "metrics.json", scores)
        run.log_metrics({k: v for k, v in scores.items() if np.isfinite(v)})
        run.log_artifact(out_dir)
    return out_dir
