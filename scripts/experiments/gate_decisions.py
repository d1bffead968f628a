"""What the promotion gate's quality checks (collapse, then the absolute floor) say of evaluations.

    python scripts/experiments/gate_decisions.py reports/evaluate_dcgan/metrics.json ...

Each metrics.json is read as the ``eval.*`` tags a registered version would carry, and judged with the
``registry`` section of params.yaml (parity and provenance are not part of this: they concern an export).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from imagegen.config import load_params
from imagegen.registry.gate import REQUIRED, collapse_problem, eval_tag, floor_problem


def decision(path: Path) -> str:
    """'admitted' or the gate's reason for refusing the evaluation in ``path``."""
    metrics = json.loads(path.read_text())
    tags = {eval_tag(k): str(metrics[k]) for k in REQUIRED}
    cfg = load_params("params.yaml").registry
    problem = collapse_problem("v", tags, cfg) or floor_problem("v", tags, cfg)
    return "admitted" if problem is None else f"refused: {problem}"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        m = json.loads(Path(arg).read_text())
        print(f"{arg}: relative_fid={m['relative_fid']:.4g} fid={m['fid']:.4g} -> {decision(Path(arg))}")
