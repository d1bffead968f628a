"""Models measured side by side: each sampled on the same noise and measured the same way.

Distillation reports put a teacher and its students next to each other: steps, parameters,
multiply-adds per image, images/s, FID/KID/precision/recall on the evaluation features (when the
feature model of this dataset exists) and, given the reference model's images on the same noise,
SSIM/PSNR agreement with them. Part of distillation (it measures with :mod:`imagegen.distill.cost` and
:mod:`imagegen.distill.agreement`); the quality metrics come from :mod:`imagegen.evaluation`, below it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imagegen.config import EvaluateConfig
from imagegen.data.processed import ProcessedDataset
from imagegen.distill import agreement, cost
from imagegen.profiling import phase
from imagegen.sampler_settings import SamplerSettings
from imagegen.sampling import make_sampler, sample_images
from imagegen.training.families import family_spec
from imagegen.training.families.base import Family

QUALITY_KEYS = ("fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage", "class_coverage")


@dataclass
class Measurement:
    """One model's figures and the images it drew from the shared noise (``images[:compare_n]`` are
    the ones paired with the reference)."""

    figures: dict[str, Any]
    images: np.ndarray = field(repr=False)


class SideBySide:
    """Samples each model on the same noise (from ``seed``) and measures it the same way.

    ``evaluate`` is the project's evaluation section (feature model, sample count, metric settings);
    ``compare_n`` images of each model are paired with the reference's for agreement, and ``speed_n`` are
    timed when the sampling itself was too short to time.
    """

    def __init__(
        self, evaluate: EvaluateConfig, dataset: ProcessedDataset, seed: int, compare_n: int, speed_n: int
    ) -> None:
        self.evaluate = evaluate
        self.dataset = dataset
        self.seed = seed
        self.compare_n = compare_n
        self.speed_n = speed_n
        self.notes: list[str] = []
        self.extractor: Any = None
        self.floor: dict[str, float] | None = None
        self._real: tuple[np.ndarray, np.ndarray] | None = None
        self._predictors: dict[int, tuple[Any, Any]] = {}  # id(network) -> (network, predictor)
        features_dir = evaluate.features_dir
        if not (Path(features_dir) / "model.json").is_file():
            self.notes.append(
                f"no evaluation feature model at {features_dir}: FID/KID/precision/recall need "
                "`imagegen train-features` first; cost and agreement figures are reported "
                "without them"
            )
            return
        from imagegen.evaluation.features import load_extractor

        extractor = load_extractor(features_dir)
        trained_on = extractor.meta["dataset"]["content_hash"]
        if trained_on != dataset.content_hash:
            self.notes.append(
                f"the feature model at {features_dir} was trained on another dataset "
                f"({trained_on}); re-run `imagegen train-features` for quality metrics"
            )
            return
        self.extractor = extractor

    @property
    def has_quality_metrics(self) -> bool:
        return self.extractor is not None

    def _real_features(self) -> tuple[np.ndarray, np.ndarray]:
        """The held-out real features (embedded once), and the real-vs-real floor beside them."""
        if self._real is None:
            from imagegen.evaluation.quality import real_features, real_floor

            cfg = self.evaluate
            feats, probs, _ = real_features(self.extractor, self.dataset, cfg.max_real, self.seed, cfg.batch_size)
            self._real = (feats, probs)
            floor = real_floor(feats, probs, cfg, self.seed)
            self.floor = {k: floor[k] for k in QUALITY_KEYS}
        return self._real

    def _predictor(self, family: Family) -> Any:
        """One compiled predictor per diffusion denoiser (its EMA network), however many grids it is sampled on."""
        denoiser = family_spec(family.spec["family"]).denoiser
        if denoiser is None:
            return None
        net = family.networks[denoiser[0]]
        if id(net) not in self._predictors:
            from imagegen.training.predict import compiled_predictor

            # The network is kept alive with its predictor, so ids stay unique.
            self._predictors[id(net)] = (net, compiled_predictor(net))
        return self._predictors[id(net)][1]

    def measure(self, family: Family, sampling: SamplerSettings, reference: np.ndarray | None = None) -> Measurement:
        """Figures for ``family`` sampled with ``sampling``; agreement with ``reference`` images."""
        cfg = self.evaluate
        sample = make_sampler(family, sampling, predict=self._predictor(family))
        n = max(cfg.n_samples, self.compare_n) if self.has_quality_metrics else self.compare_n
        timed = cost.TimedSampler(sample)
        with phase("side_by_side.sample", "work"):
            images, _ = sample_images(timed, family.spec, n, self.seed, cfg.batch_size)
        with phase("side_by_side.cost", "work"):
            speed = timed.images_per_second()  # the sampling just done, when it had two full batches to time
            figures: dict[str, Any] = {
                "steps": cost.sampling_steps(family, sampling),
                "parameters": cost.parameters(family),
                "macs_per_image": cost.macs_per_image(family, sampling),
                "images_per_sec": speed if speed is not None else cost.images_per_second(sample, self.speed_n),
            }
        if self.has_quality_metrics:
            from imagegen.evaluation.quality import quality_metrics

            real_f, real_p = self._real_features()
            generated = images[: cfg.n_samples]
            fake_f, fake_p = self.extractor.embed(generated, cfg.batch_size)
            quality = quality_metrics(real_f, real_p, fake_f, fake_p, cfg, self.seed)
            figures.update({k: quality[k] for k in QUALITY_KEYS})
        if reference is not None:
            k = self.compare_n
            similarity = agreement.agreement(reference[:k], images[:k])
            figures.update(ssim_to_teacher=similarity["ssim"], psnr_to_teacher=similarity["psnr"])
        return Measurement(figures, images)
