"""The stage graph as DVC reads it from ``dvc.yaml``: the one description the Prefect flow follows.

Nothing here lists stages by hand. Stage names (``foreach`` items such as ``evaluate@dcgan`` included) and
their upstream stages come from DVC's own index, so a stage added to ``dvc.yaml`` is a Prefect task on the
next run without touching the flow.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from imagegen.errors import ImagegenError


@dataclass(frozen=True)
class Stage:
    """One DVC stage: its address (``train_vae``, ``evaluate@dcgan``) and the stages it reads outputs of."""

    name: str
    upstream: tuple[str, ...]


def read_stages(root: Path | str) -> list[Stage]:
    """Every stage of ``root/dvc.yaml`` in a topological order (upstream first).

    Ties are broken by the order the stages are written in ``dvc.yaml``, so the order is stable and reads
    like the file: ``ingest``, then the trainings, ... ``register@*`` last.
    """
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    root = Path(root)
    if not (root / "dvc.yaml").is_file():
        raise ImagegenError(f"{root / 'dvc.yaml'}: no dvc.yaml here; run the pipeline from the project folder")
    try:
        with Repo(str(root)) as repo:
            index = repo.index
            written = {stage: i for i, stage in enumerate(index.stages)}
            graph = index.graph  # edges: stage -> the stages whose outputs it depends on
            dependents_first = graph.reverse(copy=True)
            order = nx.lexicographical_topological_sort(dependents_first, key=lambda s: f"{written[s]:06d}")
            return [
                Stage(
                    s.name,
                    tuple(sorted((u.name for u in graph.successors(s)), key=str)),
                )
                for s in order
            ]
    except DvcException as exc:
        raise ImagegenError(f"{root / 'dvc.yaml'}: DVC cannot read the stage graph: {exc}") from exc


def with_upstream(stages: Sequence[Stage], targets: Iterable[str] | None) -> list[Stage]:
    """``stages`` restricted to ``targets`` and everything they depend on, order kept (all when None)."""
    if targets is None:
        return list(stages)
    by_name = {s.name: s for s in stages}
    wanted: set[str] = set()
    pending = list(targets)
    unknown = sorted(set(pending) - set(by_name))
    if unknown:
        raise ImagegenError(f"stages: unknown {unknown}; dvc.yaml has {[s.name for s in stages]}")
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending.extend(by_name[name].upstream)
    return [s for s in stages if s.name in wanted]
