"""The conditional check of a caption model: does it draw what the prompt names?

For a caption-conditioned DDPM trained on a labelled dataset (captions from ``data.caption_template``), images
are generated for each class's caption, in equal numbers, and the pipeline's feature classifier labels them.
The *prompted-class accuracy* is the share it assigns to the prompted class: chance is 1 / num_classes, and
the classifier's own test accuracy on real images is the practical ceiling. It is reported at classifier-free
guidance 1 (the conditional prediction alone) and 3, for every prompt and as the mean and the worst prompt's
(a mean can hide one prompt that does not work). Datasets whose captions do not name a class (a folder's
``captions.csv``) have no class prompts, so the check is skipped there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagegen.data.loader import to_uint8
from imagegen.data.processed import ProcessedDataset
from imagegen.evaluation.features import FeatureExtractor

if TYPE_CHECKING:
    from imagegen.config import SampleConfig

GUIDANCE_SCALES = (1.0, 3.0)


def metric_key(scale: float) -> str:
    """``prompt_accuracy_g1``, ``prompt_accuracy_g3``, ``prompt_accuracy_g1.5``: the mean over prompts."""
    return f"prompt_accuracy_g{scale:g}"


def worst_key(scale: float) -> str:
    """``prompt_accuracy_min_g3``: the worst prompt's accuracy at that guidance scale."""
    return f"prompt_accuracy_min_g{scale:g}"


def scale_key(scale: float) -> str:
    """``g3``: a guidance scale's key in the per-prompt table."""
    return f"g{scale:g}"


def class_prompts(dataset: ProcessedDataset) -> list[str] | None:
    """The caption of each class (template captions), or None when the dataset's captions are per image."""
    captions = dataset.captions
    return None if captions is None else captions.get("class_captions")


def prompt_accuracy(
    model_dir: Path,
    dataset: ProcessedDataset,
    extractor: FeatureExtractor,
    defaults: SampleConfig | None,
    seed: int,
    n: int,
    scales: Sequence[float] = GUIDANCE_SCALES,
    batch_size: int = 256,
) -> dict[str, float]:
    """``{prompt_accuracy_g<s>: mean, prompt_accuracy_min_g<s>: worst prompt}`` for each guidance scale,
    ``prompt_n`` (images per scale) and ``prompts``: ``{prompt: {"g<s>": accuracy}}``.

    ``n`` images per scale (rounded down to a multiple of the classes), prompt ``i`` being class ``i % C``'s
    caption, sampled with the project's ``sample`` section ``defaults`` at each guidance scale; every scale
    starts from the same noise (``seed``). Empty when the dataset has no class captions.
    """
    from imagegen.artifact import load_model
    from imagegen.sampling import resolve_settings
    from imagegen.training.families import family_spec
    from imagegen.training.predict import compiled_predictor

    prompts = class_prompts(dataset)
    if not prompts:
        return {}
    classes = len(prompts)
    n = max(classes, (n // classes) * classes)
    labels = np.arange(n) % classes
    loaded = load_model(model_dir)
    declared = family_spec(loaded.name)
    predict = compiled_predictor(loaded.family.networks[declared.denoiser[0]]) if declared.denoiser else None
    out: dict[str, Any] = {"prompt_n": float(n)}
    table: dict[str, dict[str, float]] = {prompt: {} for prompt in prompts}
    for scale in scales:
        settings = resolve_settings(defaults, loaded.meta, {"guidance_scale": float(scale)})
        rng = np.random.default_rng(seed)
        images = []
        for start in range(0, n, batch_size):
            part = labels[start : start + batch_size]
            batch_prompts = [prompts[c] for c in part]
            x = declared.generate(
                loaded.family, len(part), rng, settings=settings, predict=predict, prompt=batch_prompts
            )
            images.append(to_uint8(x))
        _, probs = extractor.embed(np.concatenate(images), batch_size)
        hit = probs.argmax(1) == labels
        shares = [float(hit[labels == c].mean()) for c in range(classes)]
        for prompt, share in zip(prompts, shares, strict=True):
            table[prompt][scale_key(scale)] = share
        out[metric_key(scale)] = float(hit.mean())
        out[worst_key(scale)] = min(shares)
    out["prompts"] = table
    return out


def with_real_ceiling(
    result: dict[str, Any], real_probs: np.ndarray, real_labels: np.ndarray
) -> dict[str, dict[str, float]]:
    """The per-prompt table of ``result`` with a ``real`` column: the classifier's accuracy on the real test
    images of the prompted class, the most a prompt's share can be expected to reach (a class the classifier
    confuses on real images caps its prompt too). Prompts whose class has no real image get NaN."""
    predicted = real_probs.argmax(1)
    table = {}
    for c, (prompt, scores) in enumerate(result["prompts"].items()):
        of_class = real_labels == c
        ceiling = float((predicted[of_class] == c).mean()) if of_class.any() else float("nan")
        table[prompt] = {**scores, "real": ceiling}
    return table
