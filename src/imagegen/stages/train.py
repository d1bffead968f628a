"""Stage ``train_<family>``: processed dataset -> trained model folder (weights and sample grids), plus
``<reports_dir>/train_<family>/metrics.json`` and ``train_log.csv`` (the loss curve) for dvc metrics/plots."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from imagegen.artifact import save_model
from imagegen.config import Params
from imagegen.data.loader import BatchStream
from imagegen.data.processed import ProcessedDataset
from imagegen.fileio import write_json, write_text
from imagegen.sampling import sampler_kwargs
from imagegen.tracking import start_run
from imagegen.training.distributed import follower_outputs, initialize_multihost, is_writer
from imagegen.training.families import build_family, family_module
from imagegen.training.loop import Trainer
from imagegen.training.precision import accelerator, dtype_policy, resolve_policy
from imagegen.training.seeding import seed_everything

__all__ = ["history_csv", "run_train", "sampler_kwargs", "seed_everything"]


def history_csv(history: list[dict[str, float]]) -> str:
    keys = sorted({k for row in history for k in row if k != "step"})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", *keys])
    for row in history:
        writer.writerow([int(row["step"]), *(f"{row.get(k, float('nan')):.6g}" for k in keys)])
    return buf.getvalue()


def run_train(
    params: Params,
    family_name: str,
    data_dir: Path | None = None,
    out_dir: Path | None = None,
    resume: bool = False,
    show_progress: bool = True,
) -> Path:
    """Train ``family_name`` on the processed dataset; write the model folder and return its path."""
    if initialize_multihost() and not is_writer():  # JAX_* variables: process 0 writes, the others train
        out_dir, params = follower_outputs(params, family_name)
    data_dir = Path(data_dir) if data_dir is not None else params.data.output_dir
    out_dir = Path(out_dir) if out_dir is not None else params.train.models_dir / family_name
    ckpt_dir = params.train.checkpoints_dir / family_name
    report_dir = params.train.reports_dir / f"train_{family_name}"
    cfg = params.train
    family_cfg = getattr(params, family_name)
    dataset = ProcessedDataset.open(data_dir)

    seed_everything(params.seed)
    policy = resolve_policy(cfg.mixed_precision)
    with dtype_policy(policy):
        family = build_family(family_name, params, dataset.image_shape, dataset.num_classes)
    stream = BatchStream(dataset.split("train"), cfg.batch_size, params.seed)
    module = family_module(family_name)

    def sample_fn(fam: Any, n: int, rng: np.random.Generator) -> np.ndarray:
        return module.generate(fam, n, rng, **sampler_kwargs(params))

    run_params = {"family": family_name, "seed": params.seed}
    for section in ("data", "train", family_name, "sample"):
        run_params.update({f"{section}.{k}": v for k, v in getattr(params, section).model_dump(mode="json").items()})
    with start_run(
        params.tracking,
        run_name=f"train-{family_name}",
        stage=f"train_{family_name}",
        dataset_hash=dataset.content_hash,
        params=run_params,
        tags={"keras.backend": keras.backend.backend(), "device": accelerator(), "dtype_policy": policy},
    ) as run:
        trainer = Trainer(
            family,
            stream,
            cfg,
            seed=params.seed,
            checkpoint_dir=ckpt_dir,
            samples_dir=out_dir / "samples",
            sample_fn=sample_fn,
            on_metrics=lambda step, m: run.log_metrics(m, step=step),
            on_grid=lambda step, path, _: run.log_artifact(path, "samples"),
            show_progress=show_progress,
        )
        resumed = trainer.resume() if resume else None
        if not resume:
            trainer.clear_checkpoints()
        result = trainer.fit(family_cfg.steps)

        meta = {
            "dataset": {"name": dataset.manifest["dataset"], "content_hash": dataset.content_hash},
            "step": result.step,
            "trained_with": {"backend": keras.backend.backend(), "device": accelerator(), "dtype_policy": policy},
            "resumed_from": str(resumed) if resumed else None,
            "stopped_early": trainer.stopped_early,
            "mlflow_run_id": run.run_id,  # None when tracking is off; lets a distillation link back to this run
        }
        save_model(family, out_dir, meta)
        metrics = {
            "step": result.step,
            **{f"final.{k}": v for k, v in result.metrics.items()},
            "images_per_sec": result.images_per_sec,
            "ms_per_step": result.ms_per_step,
            "parameters": family.trainable_count(),
        }
        write_json(report_dir / "metrics.json", metrics)
        write_text(report_dir / "train_log.csv", history_csv(result.history))
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float) and np.isfinite(v)})
        for item in [out_dir / "model.json", *(out_dir / f for f in os.listdir(out_dir) if f.endswith(".weights.h5"))]:
            run.log_artifact(item, "model")
        run.log_artifact(report_dir / "train_log.csv")
    return out_dir
        dataset_dir=dataset.path,  # logged as the run's mlflow dataset input
