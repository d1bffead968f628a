"""Stage ``evaluate``: generated images (from a model or an ``.npz``) vs the held-out split, on learned features.

Writes ``metrics.json`` (for ``dvc metrics``), ``class_histogram.csv`` (for ``dvc plots``: the share of each
class among real and generated images, where mode collapse shows), ``grid.png`` and ``report.md``, and logs
them to MLflow. Every metric is reported beside its *floor*: the same metric between two disjoint halves of
the real held-out images, i.e. what a perfect generator would score at that sample size.

``metrics.json`` names what was measured: ``weights_digest`` of the model sampled (or ``samples_sha256`` of a
``--samples`` file), so ``imagegen register`` can refuse an evaluation of other weights.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from imagegen.config import Params
from imagegen.data.loader import to_uint8
from imagegen.data.processed import ProcessedDataset
from imagegen.errors import DataError
from imagegen.evaluation.metrics import image_similarity
from imagegen.fileio import sha256_file, write_json, write_text
from imagegen.images import save_grid
from imagegen.outputs import MARKER, check_output, marker_text
from imagegen.provenance import DIGEST_KEY
from imagegen.tracking import TrackingProcess, start_run


def load_samples_npz(path: Path) -> np.ndarray:
    """The uint8 (N,H,W,C) ``images`` of an ``.npz`` such as ``imagegen sample`` writes.

    Anything else is a :class:`DataError` naming ``path`` and what was expected: a missing file, a plain
    ``.npy``, a file that is no zip at all, a truncated archive, an ``images`` array of another dtype or rank.
    The dtype and shape are read from the ``.npy`` header before any data, and nothing is ever unpickled.
    """
    import zipfile
    import zlib

    path = Path(path)
    expected = "expected an .npz with uint8 'images' (N,H,W,C), e.g. from `imagegen sample`"
    if not path.is_file():
        raise DataError(f"{path}: {'is a folder' if path.is_dir() else 'no such file'}; {expected}")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic == b"\x93NUMPY":
        raise DataError(f"{path}: a plain .npy array, not an .npz archive; {expected}")
    if not magic.startswith(b"PK"):
        raise DataError(f"{path}: not an .npz archive; {expected}")
    try:
        with zipfile.ZipFile(path) as archive:
            if "images.npy" not in archive.namelist():
                found = sorted(name.removesuffix(".npy") for name in archive.namelist())
                raise DataError(f"{path}: no 'images' array (found {found}); {expected}")
            fmt = np.lib.format
            with archive.open("images.npy") as entry:
                version = fmt.read_magic(entry)
                read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, _, dtype = read_header(entry)
            if dtype != np.uint8 or len(shape) != 4:
                raise DataError(f"{path}: 'images' is {dtype} {shape}; {expected}")
            with archive.open("images.npy") as entry:
                return np.lib.format.read_array(entry, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: a damaged or truncated .npz archive ({reason}); {expected}") from None


def checked_samples(path: Path, knn_k: int) -> np.ndarray:
    """The ``--samples`` images, refused with one line when too few to evaluate (k-NN needs k + 1)."""
    images = load_samples_npz(path)
    if len(images) <= knn_k:
        raise DataError(
            f"{path}: {len(images)} image(s) in 'images'; expected at least {knn_k + 1} "
            f"(evaluate.knn_k={knn_k} neighbours per image for precision/recall, two for FID's covariance)"
        )
    return images


def class_histogram_csv(real_p: np.ndarray, fake_p: np.ndarray, class_names: list[str]) -> str:
    c = len(class_names)
    real = np.bincount(real_p.argmax(1), minlength=c) / len(real_p)
    fake = np.bincount(fake_p.argmax(1), minlength=c) / len(fake_p)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "real_share", "generated_share"])
    for name, r, f in zip(class_names, real, fake, strict=True):
        w.writerow([name, f"{r:.4f}", f"{f:.4f}"])
    return buf.getvalue()


def report_markdown(title: str, result: dict[str, Any]) -> str:
    rows = [
        ("FID (lower is better)", "fid"),
        ("KID mean", "kid_mean"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("FID / real feature variance", "relative_fid"),
        ("density", "density"),
        ("coverage (real k-NN balls reached)", "coverage"),
        ("class coverage", "class_coverage"),
        ("class entropy (1 = uniform)", "class_entropy"),
        ("mean classifier confidence", "mean_confidence"),
    ]
    lines = [
        f"# Evaluation: {title}",
        "",
        f"{result['n_generated']} generated vs {result['n_real']} held-out real images, on the features of the "
        f"pipeline's classifier (test accuracy {result['feature_test_accuracy']:.3f}). The floor is the same "
        "metric between two disjoint halves of the real images.",
        "",
        "| metric | generated | real-vs-real floor |",
        "|---|---|---|",
    ]
    for label, key in rows:
        lines.append(f"| {label} | {result[key]:.4f} | {result['floor'][key]:.4f} |")
    for key in ("ssim", "psnr"):
        if key in result:
            lines.append(f"| reconstruction {key.upper()} | {result[key]:.4f} | |")
    if result.get("prompts"):
        scales = list(next(iter(result["prompts"].values())))
        lines += [
            "",
            "Share of each prompt's images the classifier assigns to the prompted class, by guidance scale "
            "(real: its accuracy on the real test images of that class, the ceiling):",
            "",
            "| prompt | " + " | ".join(scales) + " |",
            "|---|" + "---|" * len(scales),
        ]
        lines += [f"| {p} | " + " | ".join(f"{s[k]:.3f}" for k in scales) + " |" for p, s in result["prompts"].items()]
    lines += ["", "![samples](grid.png)", ""]
    return "\n".join(lines)


def run_evaluate(
    params: Params,
    out_dir: Path,
    model_dir: Path | None = None,
    samples: Path | None = None,
    data_dir: Path | None = None,
    features_dir: Path | None = None,
    show_progress: bool = True,
    sampler: dict[str, Any] | None = None,
    tracking: TrackingProcess | None = None,
) -> Path:
    """Evaluate ``model_dir`` (sampling ``evaluate.n_samples`` images) or the images in ``samples``.

    A model is sampled as :func:`imagegen.sampling.resolve_settings` decides: ``params.sample``, then the model's
    own ``sampling`` record (a distilled student's grid), then the explicit ``sampler`` overrides.
    """
    if (model_dir is None) == (samples is None):
        raise DataError("evaluate: give exactly one of --model DIR or --samples FILE.npz")
    cfg = params.evaluate
    data_dir = Path(data_dir) if data_dir is not None else params.data.output_dir
    features_dir = Path(features_dir) if features_dir is not None else cfg.features_dir
    out_dir = check_output(Path(out_dir), "evaluation", inputs=[model_dir, samples, data_dir, features_dir])
    given = checked_samples(Path(samples), cfg.knn_k) if samples is not None else None  # before any loading
    from imagegen.evaluation.features import load_extractor  # Keras: after the argument checks
    from imagegen.evaluation.quality import quality_metrics, real_features, real_floor

    dataset = ProcessedDataset.open(data_dir)
    extractor = load_extractor(features_dir)
    if extractor.meta["dataset"]["content_hash"] != dataset.content_hash:
        raise DataError(
            f"{extractor.path}: feature extractor was trained on dataset {extractor.meta['dataset']['content_hash']}, "
            f"not {dataset.content_hash} ({dataset.path}); re-run `imagegen train-features`"
        )

    extra: dict[str, float] = {}
    model_meta: dict[str, Any] = {}
    measured: dict[str, str]
    if model_dir is not None:
        from imagegen.artifact import read_model_meta
        from imagegen.sampling import generate_images

        model_meta = read_model_meta(Path(model_dir))  # a DataError naming model.json if it is unreadable
        measured = {DIGEST_KEY: model_meta[DIGEST_KEY]}
        images, _ = generate_images(
            Path(model_dir),
            cfg.n_samples,
            seed=params.seed,
            show_progress=show_progress,
            defaults=params.sample,
            **(sampler or {}),
        )
        title = f"{model_meta.get('family', 'model')} ({model_dir})"
        if reconstructs(model_meta.get("family")):
            extra = reconstruction_scores(Path(model_dir), dataset, n=min(500, cfg.max_real))
        if model_meta.get("spec", {}).get(model_meta.get("family"), {}).get("captions"):  # caption model
            from imagegen.evaluation.conditional import prompt_accuracy

            extra.update(
                prompt_accuracy(Path(model_dir), dataset, extractor, params.sample, params.seed, cfg.n_samples)
            )
    else:
        images = given
        title = str(samples)
        measured = {"samples_sha256": sha256_file(Path(samples))}

    real_f, real_p, real_labels = real_features(extractor, dataset, cfg.max_real, params.seed, cfg.batch_size)
    if extra.get("prompts"):
        from imagegen.evaluation.conditional import with_real_ceiling

        extra["prompts"] = with_real_ceiling(extra, real_p, real_labels)
    fake_f, fake_p = extractor.embed(images, cfg.batch_size)
    result: dict[str, Any] = quality_metrics(real_f, real_p, fake_f, fake_p, cfg, params.seed)
    result["floor"] = real_floor(real_f, real_p, cfg, params.seed)
    result.update(extra)
    result.update(
        n_generated=int(len(images)),
        n_real=int(len(real_f)),
        feature_test_accuracy=float(extractor.meta["scores"]["test_accuracy"]),
        **measured,
    )

    write_json(out_dir / "metrics.json", result)
    write_text(out_dir / "class_histogram.csv", class_histogram_csv(real_p, fake_p, dataset.class_names))
    save_grid(out_dir / "grid.png", images[:64])
    write_text(out_dir / "report.md", report_markdown(title, result))
    write_text(out_dir / MARKER, marker_text("evaluation"))

    flat = {k: v for k, v in result.items() if isinstance(v, float | int) and np.isfinite(v)}
    flat.update({f"floor.{k}": v for k, v in result["floor"].items() if np.isfinite(v)})
    for i, scores in enumerate(result.get("prompts", {}).values()):  # per prompt, in class order
        flat.update({f"prompt_accuracy_{scale}.{i}": v for scale, v in scores.items()})
    with start_run(
        params.tracking,
        process=tracking,
        run_name=f"evaluate-{model_meta.get('family', 'samples')}",
        stage="evaluate",
        dataset_hash=dataset.content_hash,
        dataset_dir=dataset.path,  # logged as the run's mlflow dataset input
        dataset_context="evaluation",
        params={"model": str(model_dir or ""), "samples": str(samples or ""), "n_samples": cfg.n_samples},
        tags=measured,
    ) as run:
        run.log_metrics(flat)
        for name in ("metrics.json", "class_histogram.csv", "grid.png", "report.md"):
            run.log_artifact(out_dir / name, "evaluation")
    return out_dir


def reconstructs(family_name: Any) -> bool:
    """Whether the family declares a reconstruction (scored by :func:`reconstruction_scores`); False for a name
    that is no family (the model folder is then refused when it is loaded)."""
    from imagegen.training.families import FAMILIES, family_spec

    return family_name in FAMILIES and family_spec(family_name).reconstruct is not None


def reconstruction_scores(model_dir: Path, dataset: ProcessedDataset, n: int) -> dict[str, float]:
    """SSIM and PSNR (scikit-image) of the model's reconstructions of held-out images (a VAE's)."""
    from imagegen.artifact import load_model
    from imagegen.data.loader import to_unit_range
    from imagegen.training.families import family_spec

    loaded = load_model(model_dir)
    reconstruct = family_spec(loaded.name).reconstruct
    real = np.asarray(dataset.split("test").images[:n])
    recon = to_uint8(reconstruct(loaded.family, to_unit_range(real)))
    sim = image_similarity(real, recon)
    return {"ssim": float(sim["ssim"]), "psnr": float(sim["psnr"])}
