"""Markdown tables of a pipeline run's results, for Prefect artifacts and the MLflow parent run.

Each function takes plain values read from the stages' ``metrics.json`` files (or the promotion decisions)
and returns markdown; nothing here talks to Prefect or MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

EVAL_METRICS = (
    "fid",
    "kid_mean",
    "precision",
    "recall",
    "density",
    "coverage",
    "class_coverage",
    "class_entropy",
    "mean_confidence",
)


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, int | float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")  # one table cell


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_num(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def evaluation_table(reports: Mapping[str, Mapping[str, Any] | None]) -> str:
    """Per model, each metric beside the floor (the same metric between two halves of the real data)."""
    parts = ["## Evaluation: each model's metrics beside the real-data floor", ""]
    for name, report in reports.items():
        parts.append(f"### {name}")
        if report is None:
            parts += ["not evaluated in this run (no metrics.json)", ""]
            continue
        floor = report.get("floor", {})
        rows = [(key, report[key], floor.get(key)) for key in EVAL_METRICS if key in report]
        parts += [_table(("metric", "model", "floor"), rows), ""]
    return "\n".join(parts)


def export_table(reports: Mapping[str, Mapping[str, Any] | None]) -> str:
    """Per shipped model and artifact: size, latency, parity with the Keras model, verdict."""
    rows = []
    missing = []
    for name, report in reports.items():
        if report is None:
            missing.append(name)
            continue
        for variant, a in report.get("artifacts", {}).items():
            rows.append(
                (
                    name,
                    variant,
                    a.get("bytes", 0) / 1024,
                    a.get("latency_ms_per_image"),
                    a.get("max_abs_error"),
                    a.get("ssim"),
                    "pass" if a.get("passed") else "FAIL",
                )
            )
    header = ("model", "artifact", "KiB", "ms/image", "max abs err", "SSIM", "parity")
    text = "## Export\n\n" + _table(header, rows)
    if missing:
        text += f"\n\nnot exported in this run: {', '.join(missing)}"
    return text


def promotion_verdict(decision: Mapping[str, Any]) -> str:
    """The decision in the CLI's words: ``unchanged`` when the challenger already was the champion (nothing
    was written), else ``promoted to champion`` or ``refused``."""
    if not decision.get("changed", True):
        return "unchanged"
    return "promoted to champion" if decision["promoted"] else "refused"


def promotion_table(decisions: Mapping[str, Mapping[str, Any]], links: Mapping[str, str | None]) -> str:
    """The promotion decision per shipped model, with its reason (as recorded on the model version)."""
    rows = []
    for name, d in decisions.items():
        version = f"[v{d['version']}]({links[name]})" if links.get(name) else f"v{d['version']}"
        decision = promotion_verdict(d)
        rows.append((name, d["registered"], version, decision, d["reason"]))
    header = ("model", "registered model", "version", "decision", "reason")
    return "## Promotion\n\n" + _table(header, rows)


def runs_table(parent: Mapping[str, Any], children: Sequence[Mapping[str, Any]], tracking_uri: str) -> str:
    """The MLflow parent run and its child runs, linked when the store has a UI."""

    def link(run: Mapping[str, Any]) -> str:
        return f"[{run['run_id']}]({run['url']})" if run.get("url") else str(run["run_id"])

    rows = [("pipeline (parent)", parent.get("name", ""), link(parent))]
    rows += [(c.get("stage") or "", c["name"], link(c)) for c in children]
    text = f"## MLflow runs\n\nstore: `{tracking_uri}`\n\n" + _table(("stage", "run", "run id"), rows)
    if not tracking_uri.startswith(("http://", "https://")):
        text += f"\n\nopen with `mlflow ui --backend-store-uri {tracking_uri}`"
    return text


def publish_text(published: Mapping[str, Any] | None, skipped: str | None) -> str:
    """What the run published: the DVC experiment, its commit, the git and DVC remotes, and how a teammate
    gets it without retraining; or why nothing was published."""
    if published is None:
        return f"## Published\n\n{skipped or 'not published'}"
    name, remote = published["experiment"], published["git_remote"]
    rows = [
        ("experiment", f"`{name}`"),
        ("commit", f"`{published['commit']}`"),
        ("git remote", f"{remote} (`{published['git_url']}`)"),
        ("DVC remote", f"{published['dvc_remote']} (`{published['dvc_url']}`)"),
    ]
    if published.get("restored"):
        rows.append(("worker's folder", "back at HEAD for " + ", ".join(f"`{p}`" for p in published["restored"])))
    get = (
        f"```\npython -m pipelines.publish get {name}\n```\n"
        f"(`dvc exp pull {remote} {name}` and `dvc exp apply {name}`, once a folder remote named by a relative "
        "path is pinned in `.dvc/config.local`: README, DVC remote)"
    )
    table = _table(("what", "where"), rows)
    return f"## Published\n\n{table}\n\nA teammate's clone gets it, no training:\n\n{get}"
