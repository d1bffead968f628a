"""Where the time of ``dvc repro`` goes: per DVC stage, wall time split into DVC's own overhead, process start
and imports, XLA/graph compilation, the work (steps, samples, conversions), I/O and MLflow tracking.

    python bench/pipeline_profile.py --clone /tmp/x --out reports/profile.json   # the whole pipeline, clean clone
    python bench/pipeline_profile.py --project /tmp/x --stage train_vae --stage evaluate@vae   # re-run stages

``--clone`` clones this repository (its committed HEAD) into a new folder and runs one plain ``dvc repro`` there,
so it takes as long as ``dvc repro`` itself; ``--repeat N`` does that N times, each in a fresh clone
(``FOLDER/run1`` ...), one after the other, and reports every run's wall time and their median (the stage table
is the median run's). ``--baseline REV`` also reproduces a clone at that commit (``FOLDER/baseline1`` ...) in
every round, first in odd rounds and second in even ones, so the speed of the machine, which drifts by several
percent within an hour on shared hosts, weighs on both alike; it reports both medians and their ratio with the
range of the per-round ratios. Before each run the machine is checked for idleness (load average, busy processes), and
during it the CPU the rest of the machine used is measured (``/proc/stat`` minus this run's process tree).
``--stage`` runs ``dvc repro --single-item --force STAGE`` for each
stage given, in an existing project (whose stages upstream are already built). Either way every ``imagegen``
process writes its phase timings (``IMAGEGEN_PROFILE``, see ``imagegen.profiling``) and this script joins them
with the stage boundaries it reads from DVC's output. The stage list comes from DVC (``pipelines.dvc_graph``).

Columns (seconds): ``wall`` from DVC starting the stage to the next one starting; ``dvc`` the part outside the
imagegen process (DVC hashing, caching, lock file); ``start+imports`` interpreter start to the first phase
(imports, TensorFlow start-up, params); ``compile`` first train steps (XLA); ``work``; ``io`` (model and
checkpoint files); ``mlflow``; ``other`` untimed time inside the process (e.g. TensorFlow tear-down).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from interleaved import _cpu_times, cpu_description, describe_state, machine_state, settled_state  # noqa: E402

STAGE_LINE = re.compile(r"Running stage '([^']+)'")
SKIP_LINE = re.compile(r"Stage '([^']+)' (?:didn't change|is cached)")
COLUMNS = ("wall", "dvc", "start+imports", "compile", "work", "io", "mlflow", "other")


def stage_names(project: Path) -> list[str]:
    """The stages of ``project/dvc.yaml`` in DVC's topological order (``pipelines.dvc_graph``)."""
    sys.path.insert(0, str(ROOT))
    from pipelines.dvc_graph import read_stages

    return [s.name for s in read_stages(project)]


def run_dvc(cmd: list[str], project: Path, profile_dir: Path) -> tuple[float, dict[str, float], list[str], int]:
    """Run ``cmd`` in ``project`` streaming its output; (wall s, stage -> wall s, skipped stages, exit status)."""
    bin_dir = str(Path(sys.executable).parent)  # this venv's dvc and imagegen, activated or not
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    # The project's own src/ first: an editable install of this venv would otherwise run another checkout's code.
    pythonpath = os.pathsep.join(p for p in (str(project.resolve() / "src"), os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        "IMAGEGEN_PROFILE": f"{profile_dir}/",
        "PYTHONUNBUFFERED": "1",
        "PATH": path,
        "PYTHONPATH": pythonpath,
    }
    start = time.time()
    cmd = [shutil.which(cmd[0], path=path) or cmd[0], *cmd[1:]]
    proc = subprocess.Popen(
        cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    marks: list[tuple[str, float]] = []
    skipped: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        if m := STAGE_LINE.search(line):
            marks.append((m.group(1), time.time()))
        elif m := SKIP_LINE.search(line):
            skipped.append(m.group(1))
            marks.append(("", time.time()))  # a skipped stage ends the one before it
    status = proc.wait()
    end = time.time()
    walls: dict[str, float] = {}
    for i, (name, t) in enumerate(marks):
        if name:
            walls[name] = walls.get(name, 0.0) + (marks[i + 1][1] if i + 1 < len(marks) else end) - t
    return end - start, walls, skipped, status


def split(wall: float | None, record: dict[str, Any] | None) -> dict[str, Any]:
    """One stage's row: ``wall`` divided into the columns, from its process's profile record."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS, None)
    row["wall"] = wall
    if record is None or record.get("process_start") is None:
        return row
    started, ended = record["process_start"], record["ended"]
    entered = record.get("entered") or ended
    process = ended - started
    sums = {"compile": 0.0, "work": 0.0, "io": 0.0, "tracking": 0.0}
    for phase in record["phases"].values():
        sums[phase["category"]] += phase["seconds"]
    row.update(
        {
            "dvc": None if wall is None else wall - process,
            "start+imports": entered - started,
            "compile": sums["compile"],
            "work": sums["work"],
            "io": sums["io"],
            "mlflow": sums["tracking"],
            "other": process - (entered - started) - sum(sums.values()),
            "phases": record["phases"],
        }
    )
    return row


def read_records(profile_dir: Path) -> dict[str, dict[str, Any]]:
    """Stage -> the profile record of its imagegen process (the last one, if a stage ran several)."""
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(profile_dir.glob("*.json"), key=lambda p: p.stat().st_mtime):
        record = json.loads(path.read_text())
        records[record.get("stage") or path.stem] = record
    return records


def table(rows: dict[str, dict[str, Any]], total_wall: float) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    width = max(len("stage"), *(len(n) for n in rows))
    lines = [f"{'stage':<{width}} " + " ".join(f"{c:>13}" for c in COLUMNS)]
    totals = dict.fromkeys(COLUMNS, 0.0)
    for name, row in rows.items():
        lines.append(f"{name:<{width}} " + " ".join(f"{cell(row[c]):>13}" for c in COLUMNS))
        for c in COLUMNS:
            totals[c] += row[c] or 0.0
    lines.append(f"{'sum of stages':<{width}} " + " ".join(f"{cell(totals[c]):>13}" for c in COLUMNS))
    lines.append(f"whole command wall: {total_wall:.1f} s; load average now {os.getloadavg()}")
    return "\n".join(lines)


def children_cpu() -> float:
    """CPU seconds of every finished child process tree of this one (dvc and the imagegen processes it ran)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def profile_once(commands: list[list[str]], project: Path, names: list[str]) -> dict[str, Any]:
    """Run ``commands`` in ``project`` with the machine watched: the stage rows and what else ran meanwhile."""
    before = settled_state()
    print(describe_state(f"before (after waiting {before['waited_s']:.0f} s for idle)", before), flush=True)
    busy0, own0, t0 = _cpu_times()[0], children_cpu(), time.perf_counter()
    profile_dir = Path(tempfile.mkdtemp(prefix="imagegen-profile-"))
    total, walls, skipped, status = 0.0, {}, [], 0
    for cmd in commands:
        wall, stage_walls, stage_skipped, status = run_dvc(cmd, project, profile_dir)
        total += wall
        walls.update(stage_walls)
        skipped += stage_skipped
        if status != 0:
            print(f"{' '.join(cmd)} failed (exit {status}); profiling what ran", file=sys.stderr)
            break
    elapsed = time.perf_counter() - t0
    other = max(0.0, _cpu_times()[0] - busy0 - (children_cpu() - own0) - time.process_time()) / elapsed
    records = read_records(profile_dir)
    shutil.rmtree(profile_dir, ignore_errors=True)
    rows = {name: split(walls.get(name), records.get(name)) for name in names if name in walls or name in records}
    after = machine_state(after_work=True)
    print(table(rows, total))
    print(f"the rest of the machine used {other:.2f} cores on average during the run")
    if skipped:
        print(f"skipped by DVC (unchanged): {', '.join(sorted(set(skipped)))}")
    return {
        "project": str(project),
        "wall_s": total,
        "exit_status": status,
        "other_cores": round(other, 3),
        "machine_before": before,
        "machine_after": after,
        "stages": rows,
        "skipped": sorted(set(skipped)),
    }


def run_order(repeat: int, baseline: bool) -> list[tuple[str, int]]:
    """``(side, round)`` in the order they run: with a baseline, each round runs both sides, the baseline first in
    odd rounds and second in even ones (ABBA...), so a steady drift of the machine's speed cancels."""
    if not baseline:
        return [("current", i) for i in range(repeat)]
    order: list[tuple[str, int]] = []
    for i in range(repeat):
        pair = [("baseline", i), ("current", i)]
        order += pair if i % 2 == 0 else pair[::-1]
    return order


def compare(current: list[float], baseline: list[float]) -> dict[str, Any]:
    """Current against baseline wall times of the same rounds: medians, their ratio, the per-round ratios' range."""
    ratios = [c / b for c, b in zip(current, baseline, strict=True)]
    return {
        "median_wall_s": statistics.median(current),
        "baseline_median_wall_s": statistics.median(baseline),
        "ratio_of_medians": statistics.median(current) / statistics.median(baseline),
        "round_ratios": ratios,
        "round_ratio_range": [min(ratios), max(ratios)],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--clone", type=Path, help="new folder: clone this repository there and run `dvc repro`")
    where.add_argument("--project", type=Path, help="existing project folder (with --stage)")
    ap.add_argument("--repeat", type=int, default=1, help="with --clone: this many fresh clones, one after another")
    ap.add_argument("--stage", action="append", default=[], help="with --project: re-run this stage (repeatable)")
    ap.add_argument("--source", default=str(ROOT), help="repository to clone (default: this one)")
    ap.add_argument("--out", type=Path, help="write the profile as JSON here")
    ap.add_argument("--baseline", help="with --clone: also reproduce this commit of --source, interleaved")
    args = ap.parse_args(argv)
    if args.baseline is not None and args.clone is None:
        ap.error("--baseline goes with --clone")

    if args.clone is not None:
        if args.clone.exists() and any(args.clone.iterdir()):
            ap.error(f"--clone {args.clone}: exists and is not empty; give a new folder")
        commands = [["dvc", "repro"]]
        alone = args.repeat == 1 and args.baseline is None
        projects = [args.clone] if alone else [args.clone / f"run{i + 1}" for i in range(args.repeat)]
    else:
        if not args.stage:
            ap.error("--project needs at least one --stage NAME")
        if args.repeat != 1:
            ap.error("--repeat goes with --clone (each run needs a clean clone)")
        commands = [["dvc", "repro", "--single-item", "--force", stage] for stage in args.stage]
        projects = [args.project.resolve()]
        names = stage_names(projects[0])
        unknown = [s for s in args.stage if s not in names]
        if unknown:
            ap.error(f"--stage {unknown}: not in {projects[0] / 'dvc.yaml'} ({', '.join(names)})")

    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    base_runs: list[dict[str, Any]] = []
    order = run_order(len(projects), args.baseline is not None)
    for n, (side, i) in enumerate(order):
        project = projects[i] if side == "current" else args.clone / f"baseline{i + 1}"
        if args.clone is not None:
            subprocess.run(["git", "clone", "--quiet", args.source, str(project)], check=True)
            if side == "baseline":
                subprocess.run(["git", "-C", str(project), "checkout", "--quiet", args.baseline], check=True)
        project = project.resolve()
        print(f"\nrun {n + 1}/{len(order)} ({side}, round {i + 1}) in {project}", flush=True)
        record = profile_once(commands, project, stage_names(project))
        (runs if side == "current" else base_runs).append(record)
        if record["exit_status"] != 0:
            break
    walls = [r["wall_s"] for r in runs]
    median_run = sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]
    if len(runs) > 1:
        print(f"\nwall of each run: {', '.join(f'{w:.1f}' for w in walls)} s; median {statistics.median(walls):.1f} s")
    versus: dict[str, Any] | None = None
    if base_runs and len(base_runs) == len(runs):
        base_walls = [r["wall_s"] for r in base_runs]
        versus = compare(walls, base_walls)
        low, high = versus["round_ratio_range"]
        print(
            f"baseline {args.baseline}: {', '.join(f'{w:.1f}' for w in base_walls)} s; median "
            f"{versus['baseline_median_wall_s']:.1f} s; current / baseline {versus['ratio_of_medians']:.3f} "
            f"(rounds {low:.3f}-{high:.3f})"
        )
    status = max(r["exit_status"] for r in [*runs, *base_runs])
    if args.out is not None:
        report = {
            "project": median_run["project"],
            "command": [" ".join(c) for c in commands],
            "wall_s": median_run["wall_s"],
            "exit_status": status,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "cpu_count": os.cpu_count(),
            "cpu": cpu_description(),
            "stages": median_run["stages"],
            "skipped": median_run["skipped"],
            "runs": [{k: v for k, v in r.items() if k != "stages"} for r in runs],
            "run_walls_s": walls,
            "median_wall_s": statistics.median(walls),
        }
        if base_runs:
            base_median = sorted(base_runs, key=lambda r: r["wall_s"])[(len(base_runs) - 1) // 2]
            report["baseline"] = {
                "rev": args.baseline,
                "stages": base_median["stages"],
                "runs": [{k: v for k, v in r.items() if k != "stages"} for r in base_runs],
                "run_walls_s": [r["wall_s"] for r in base_runs],
                **(versus or {}),
            }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
