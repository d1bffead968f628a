"""The promotion gate: may this model version become ``champion``? Pure logic over version tags.

Checks, in order; the first that fails is the reason recorded on the version:

1. **Parity**: the export's parity verdict must be present and passed
   (``export.parity_passed=true``). A version registered without ``--export`` has no verdict and is
   refused.
2. **Provenance**: the version's ``weights_digest`` tag must be present and equal to the digest its
   evaluation (``eval.weights_digest``) and its export (``export.weights_digest``) measured, so a champion
   always serves the weights whose figures made it one. ``register`` refuses a mismatch already; this
   catches tags edited since and versions registered before digests existed.
3. **Evaluated**: the tags the gate reads (``eval.fid``, ``eval.relative_fid``, ``eval.precision``, ``eval.recall``,
   ``eval.class_coverage``, ``eval.class_entropy``) must exist. A version registered before class coverage
   had its own name carries it as ``eval.coverage`` (with no ``eval.density`` beside it), and is read so.
4. **Collapse**: a non-finite metric, or class entropy or recall near 0, is collapse (DCGAN mode
   collapse, VAE posterior collapse: every sample the mean image, DDPM flat or non-finite samples).
   The thresholds must be > 0, so no setting lets a collapsed model through; only ``--force``.
5. **Absolute floor**: FID as a share of the real features' total variance (``eval.relative_fid``) at most
   ``max_relative_fid``, and precision, recall, class coverage and class entropy at least their minimums.
   Every number is a share, so the floor means the same on any dataset and test-set size (a ratio to the
   real-vs-real floor FID did not: that floor is an estimation bias that shrinks as the test set grows).
   Every version must clear it, so a first version (no champion yet) is not promoted just for being first.
6. **Improvement**: with a champion, ``gate_metric`` must beat the champion's by
   ``min_improvement``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from imagegen.config import RegistryConfig

PARITY_TAG = "export.parity_passed"
DIGEST_TAG = "weights_digest"  # the registered weights (imagegen.provenance.DIGEST_KEY)
EVAL_DIGEST_TAG = "eval.weights_digest"  # the weights the evaluation sampled
EXPORT_DIGEST_TAG = "export.weights_digest"  # the weights the export converted
REQUIRED = ("fid", "relative_fid", "precision", "recall", "class_coverage", "class_entropy")


def eval_tag(metric: str) -> str:
    return f"eval.{metric}"


def read_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """``tags`` with a version's class coverage under ``eval.class_coverage`` also when it was registered as
    ``eval.coverage`` (before density and coverage of Naeem et al. were measured, that tag was class coverage)."""
    out = dict(tags)
    old = eval_tag("coverage")
    if eval_tag("class_coverage") not in out and old in out and eval_tag("density") not in out:
        out[eval_tag("class_coverage")] = out[old]
    return out


def _number(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return math.nan


def parity_problem(version: str, tags: Mapping[str, str]) -> str | None:
    verdict = tags.get(PARITY_TAG)
    if verdict == "true":
        return None
    if verdict is None:
        return (
            f"version {version} has no export parity verdict (tag {PARITY_TAG}): run "
            f"`imagegen export` and register it with --export <export folder>"
        )
    return f"version {version}: export parity failed ({PARITY_TAG}={verdict})"


def provenance_problem(version: str, tags: Mapping[str, str]) -> str | None:
    digest = tags.get(DIGEST_TAG)
    if not digest or digest == "none":
        return (
            f"version {version} has no {DIGEST_TAG} tag: registered by an older imagegen, nothing ties its "
            "evaluation and export to its weights; register the model again"
        )
    for tag, what in ((EVAL_DIGEST_TAG, "evaluation"), (EXPORT_DIGEST_TAG, "export")):
        measured = tags.get(tag, "none")
        if measured != digest:
            return (
                f"version {version}: its {what} measured weights {measured[:19]}, not the version's "
                f"{digest[:19]} ({tag} != {DIGEST_TAG}); evaluate and export the model again and register it"
            )
    return None


def missing_problem(version: str, tags: Mapping[str, str]) -> str | None:
    missing = [eval_tag(m) for m in REQUIRED if eval_tag(m) not in tags]
    if not missing:
        return None
    return (
        f"version {version} has no {', '.join(missing)} tag{'s' if len(missing) > 1 else ''}: "
        f"register "
        f"it with the metrics.json of `imagegen evaluate` (with its floor)"
    )


def collapse_problem(version: str, tags: Mapping[str, str], cfg: RegistryConfig) -> str | None:
    values = {m: _number(tags.get(eval_tag(m))) for m in REQUIRED}
    bad = [f"{eval_tag(m)}={tags[eval_tag(m)]}" for m, v in values.items() if not math.isfinite(v)]
    if bad:
        return f"version {version}: collapse: non-finite metrics ({', '.join(bad)})"
    found = []
    if values["class_entropy"] < cfg.collapse_class_entropy:
        found.append(
            f"eval.class_entropy {values['class_entropy']:.3g} < registry.collapse_class_entropy "
            f"{cfg.collapse_class_entropy:g} (samples fall in one class)"
        )
    if values["recall"] < cfg.collapse_recall:
        found.append(
            f"eval.recall {values['recall']:.3g} < registry.collapse_recall "
            f"{cfg.collapse_recall:g} "
            f"(samples cover almost none of the real data)"
        )
    return f"version {version}: collapse: {'; '.join(found)}" if found else None


def floor_problem(version: str, tags: Mapping[str, str], cfg: RegistryConfig) -> str | None:
    v = {m: float(tags[eval_tag(m)]) for m in REQUIRED}
    failed = []
    if v["relative_fid"] > cfg.max_relative_fid:
        failed.append(
            f"eval.relative_fid {v['relative_fid']:.3g} > registry.max_relative_fid {cfg.max_relative_fid:g} "
            "(FID / the real features' total variance)"
        )
    for metric, minimum in (
        ("precision", cfg.min_precision),
        ("recall", cfg.min_recall),
        ("class_coverage", cfg.min_class_coverage),
        ("class_entropy", cfg.min_class_entropy),
    ):
        if v[metric] < minimum:
            failed.append(f"eval.{metric} {v[metric]:.3g} < registry.min_{metric} {minimum:g}")
    if not failed:
        return None
    return f"version {version} is below the absolute quality floor: {'; '.join(failed)}"


def gate(
    cfg: RegistryConfig,
    version: str,
    tags: Mapping[str, str],
    champion_version: str | None,
    champion_tags: Mapping[str, str] | None,
) -> tuple[bool, str]:
    """Whether ``version`` (with ``tags``) may replace the champion, and why."""
    tags = read_tags(tags)
    checks = (
        lambda: parity_problem(version, tags),
        lambda: provenance_problem(version, tags),
        lambda: missing_problem(version, tags),
        lambda: collapse_problem(version, tags, cfg),  # needs every metric present
        lambda: floor_problem(version, tags, cfg),  # needs every metric finite
    )
    for check in checks:
        problem = check()
        if problem is not None:
            return False, problem
    key = eval_tag(cfg.gate_metric)
    new = _number(tags.get(key))
    if new is None or not math.isfinite(new):
        return False, f"version {version} has no finite {key} tag (registry.gate_metric)"
    floor_ok = "passes the absolute quality floor"
    if champion_version is None:
        return True, f"no champion yet; {floor_ok}; {key}={new:.4g}"
    old = _number((champion_tags or {}).get(key))
    old = math.inf if old is None or not math.isfinite(old) else old
    margin = cfg.min_improvement
    needed = old * (1.0 - margin)
    if new <= needed:
        return True, (
            f"{key} {new:.4g} beats champion v{champion_version}'s {old:.4g} by >= {margin:.0%} "
            f"(needed <= {needed:.4g}); {floor_ok}"
        )
    return False, (
        f"{key} {new:.4g} is not better than champion v{champion_version}'s {old:.4g} "
        f"by the required "
        f"{margin:.0%} (needed <= {needed:.4g}); champion unchanged"
    )
