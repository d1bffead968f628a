"""Side-by-side timing that holds still: configurations measured in interleaved rounds, each in its own
long-lived worker process, with the machine's other activity measured during every measurement.

Why: on a shared 2-core machine one figure per configuration says nothing. A neighbour's process, or PyTorch's
2-thread kernels meeting a busy core, moves a rate by 2-10x, and the 1-minute load average lags by a minute and
counts our own workers. So every measurement here records

- the CPU the *rest of the machine* used while it ran (``/proc/stat`` busy time minus the measured worker's own
  ``/proc/PID/stat`` time, in cores): anything above ``DISTURBED_CORES`` marks the measurement disturbed;
- the CPU the *idle* workers used meanwhile (they wait on a pipe; this shows they cost nothing, or what);
- the hypervisor's steal time (a virtual machine's cores taken by other tenants).

A benchmark defines its workers (``Worker``: a command answering JSON lines) and asks each for ``prepare``
(build, compile, calibrate the step count for ``seconds``), then runs ``rounds`` rounds in which every worker
measures once, in a rotating order, one worker at a time. :func:`summarize` reduces the rounds to median and
min-max per configuration and compares ours with the fastest reference by the ratio of medians, with the
range of ratios the extremes allow, and says when the figures cannot support a conclusion.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DISTURBED_CORES = 0.10
"""Other activity (in cores, averaged over a measurement) above which the measurement counts as disturbed."""
IDLE_LOAD = 0.5
"""A 1-minute load average above this before the start means the machine was not idle."""
WIDE_SPREAD = 0.15
"""(max - min) / median above this for a configuration: too spread to conclude from its median."""


# --------------------------------------------------------------------------------------------- machine
def _cpu_times() -> tuple[float, float]:
    """(busy, steal) seconds of the whole machine since boot, from the first line of ``/proc/stat``."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads); 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _all_processes() -> dict[int, tuple[str, float]]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            out[int(entry.name)] = (name, process_cpu(int(entry.name)))
    return out


def busy_processes(window_s: float = 1.0, exclude: Iterable[int] = (), threshold: float = 0.05) -> list[dict]:
    """Processes (other than ``exclude`` and this one) that used more than ``threshold`` cores over ``window_s``."""
    skip = {os.getpid(), *exclude}
    before = _all_processes()
    time.sleep(window_s)
    after = _all_processes()
    busy = []
    for pid, (name, cpu) in after.items():
        if pid in skip or pid not in before:
            continue
        cores = (cpu - before[pid][1]) / window_s
        if cores > threshold:
            busy.append({"pid": pid, "name": name, "cores": round(cores, 2)})
    return sorted(busy, key=lambda b: -b["cores"])


MATH_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
"""The CPU flags that decide which math kernels run: a figure from a CPU with AMX tiles (bfloat16 convolutions,
``train.cpu_math``) says nothing about one without, whatever the two are called."""


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """The CPU described by the text of Linux's ``/proc/cpuinfo`` (its first processor): model name, vendor, the
    :data:`MATH_FLAGS` it has, and whether it runs under a hypervisor."""
    fields: dict[str, str] = {}
    for line in text.strip().split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name") or platform.processor() or platform.machine() or "unknown",
        "vendor": fields.get("vendor_id"),
        "flags": [f for f in MATH_FLAGS if f in flags],
        "virtual_machine": "hypervisor" in flags,
    }


def cpu_description() -> dict[str, Any]:
    """This machine's CPU (:func:`parse_cpuinfo`); off Linux, the model as ``platform`` knows it."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        model = platform.processor() or platform.machine() or "unknown"
        return {"model": model, "vendor": None, "flags": [], "virtual_machine": None}


def describe_cpu(cpu: Mapping[str, Any] | None) -> str:
    """E.g. ``AMD EPYC (AVX-512, AVX512_BF16, no AMX; virtual machine)``."""
    if not cpu:
        return "CPU not recorded"
    flags = set(cpu.get("flags") or [])
    isa = ["AVX-512" if "avx512f" in flags else "no AVX-512"]
    isa += [name.upper() for name in ("avx512_bf16", "avx512_fp16") if name in flags]
    isa.append("AMX" if "amx_bf16" in flags else "no AMX")
    vm = "; virtual machine" if cpu.get("virtual_machine") else ""
    return f"{cpu.get('model')} ({', '.join(isa)}{vm})"


def machine_state(exclude: Iterable[int] = (), after_work: bool = False) -> dict:
    """Load averages, usable cores and busy processes now, and the CPU (:func:`cpu_description`); ``idle`` says
    whether this is a fair start.

    ``after_work``: taken right after the benchmark, whose own workers still weigh in the load average (it
    decays over minutes), so only other busy processes count against ``idle``."""
    busy = busy_processes(exclude=exclude)
    load = os.getloadavg()
    return {
        "load_average": [round(x, 2) for x in load],
        "cores": len(os.sched_getaffinity(0)),
        "busy_processes": busy,
        "idle": (after_work or load[0] <= IDLE_LOAD) and not busy,
        "load_includes_benchmark": after_work,
        "cpu": cpu_description(),
    }


def settled_state(max_wait_s: float = 180.0, exclude: Iterable[int] = ()) -> dict:
    """:func:`machine_state` once the machine is idle, waiting up to ``max_wait_s`` for the load average of
    earlier work to decay (it falls by a factor e a minute); the state as it is when the wait runs out."""
    deadline = time.monotonic() + max_wait_s
    while True:
        state = machine_state(exclude)
        if state["idle"] or time.monotonic() >= deadline:
            state["waited_s"] = round(max_wait_s - max(0.0, deadline - time.monotonic()), 1)
            return state
        time.sleep(10)


def describe_state(label: str, state: Mapping[str, Any]) -> str:
    busy = ", ".join(f"{b['name']}[{b['pid']}] {b['cores']:.2f} cores" for b in state["busy_processes"]) or "none"
    verdict = "idle" if state["idle"] else "NOT IDLE: figures are not comparable with an idle machine's"
    own = " (this benchmark's own)" if state.get("load_includes_benchmark") else ""
    return (
        f"{label}: {describe_cpu(state.get('cpu'))}, load average (1, 5, 15 min) {tuple(state['load_average'])}{own}, "
        f"{state['cores']} cores, "
        f"busy processes: {busy} -> {verdict}"
    )


# --------------------------------------------------------------------------------------------- workers
class Worker:
    """A long-lived process that answers one JSON line on stdout per JSON line on stdin (the first: ready)."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True, env=dict(env)
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text()[-3000:]
            raise SystemExit(f"the {self.name} worker died; its log ends:\n{tail}")
        msg = json.loads(line)
        if "error" in msg:
            raise SystemExit(f"the {self.name} worker failed: {msg['error']}")
        return msg

    def ask(self, request: Mapping[str, Any]) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def serve(handle: Callable[[dict], dict], ready: Mapping[str, Any]) -> None:
    """The worker side: announce ``ready``, then answer each request line with ``handle(request)``."""
    print(json.dumps(dict(ready)), flush=True)
    for line in sys.stdin:
        try:
            print(json.dumps(handle(json.loads(line))), flush=True)
        except Exception as exc:  # reported to the parent, which stops with the message
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)


def measured(worker: Worker, idle_workers: Iterable[Worker], request: Mapping[str, Any]) -> dict:
    """``worker.ask(request)`` with what the rest of the machine did meanwhile (see the module docstring)."""
    idle_workers = list(idle_workers)
    busy0, steal0 = _cpu_times()
    own0, idle0, parent0 = process_cpu(worker.pid), [process_cpu(w.pid) for w in idle_workers], time.process_time()
    t0 = time.perf_counter()
    reply = worker.ask(request)
    wall = time.perf_counter() - t0
    busy1, steal1 = _cpu_times()
    own = process_cpu(worker.pid) - own0
    idle_cpu = sum(process_cpu(w.pid) - c for w, c in zip(idle_workers, idle0, strict=True))
    parent = time.process_time() - parent0
    other = max(0.0, (busy1 - busy0) - own - parent)
    return {
        **reply,
        "worker_cores": round(own / wall, 3),
        "other_cores": round(other / wall, 3),
        "idle_workers_cpu_s": round(idle_cpu, 3),
        "steal_cores": round((steal1 - steal0) / wall, 3),
        "disturbed": other / wall > DISTURBED_CORES,
    }


def run_rounds(
    workers: Mapping[str, Worker], request: Mapping[str, Any], rounds: int, progress: Callable[[str], None] = print
) -> dict[str, dict]:
    """Prepare every worker for ``request`` (one at a time), then ``rounds`` rounds in which each measures once.

    The order rotates each round, so no configuration always runs right after the same one. Returns, per worker,
    its ``prepare`` reply and its list of measurements.
    """
    names = list(workers)
    out: dict[str, dict] = {}
    for name in names:
        others = [workers[n] for n in names if n != name]
        out[name] = {"prepare": measured(workers[name], others, {**request, "op": "prepare"}), "rounds": []}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            others = [workers[n] for n in names if n != name]
            out[name]["rounds"].append(measured(workers[name], others, {**request, "op": "measure"}))
        rates = "  ".join(f"{n} {out[n]['rounds'][-1]['rate']:.1f}" for n in names)
        progress(f"  round {r + 1}/{rounds}: {rates}")
    for name in names:
        workers[name].ask({"op": "drop"})
    return out


# --------------------------------------------------------------------------------------------- summary
@dataclass
class Spread:
    median: float
    low: float
    high: float
    disturbed: int = 0
    values: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, rounds: list[Mapping[str, Any]]) -> Spread:
        values = [float(r["rate"]) for r in rounds]
        return cls(
            statistics.median(values), min(values), max(values), sum(bool(r["disturbed"]) for r in rounds), values
        )

    @property
    def relative_spread(self) -> float:
        return (self.high - self.low) / self.median if self.median else float("inf")


def summarize(results: Mapping[str, dict], ours: str, references: list[str], target: float) -> dict:
    """Median and min-max of every configuration; ours against the fastest reference (highest median).

    ``ratio`` is median(ours) / median(best reference); ``ratio_range`` is (min ours / max best, max ours /
    min best), what the extremes of the rounds allow. The verdict is only "faster" or "slower" when that range
    lies wholly on one side of 1.0, no round was disturbed and neither configuration is widely spread.
    """
    spreads = {name: Spread.of(res["rounds"]) for name, res in results.items()}
    best = max(references, key=lambda n: spreads[n].median)
    o, b = spreads[ours], spreads[best]
    ratio = o.median / b.median
    low, high = o.low / b.high, o.high / b.low
    reasons = []
    if o.disturbed or b.disturbed:
        reasons.append(f"{o.disturbed + b.disturbed} disturbed rounds")
    for name, s in ((ours, o), (best, b)):
        if s.relative_spread > WIDE_SPREAD:
            reasons.append(f"{name} spread {s.relative_spread:.0%}")
    if low < 1.0 < high:
        reasons.append("ratio range crosses 1.0")
    if reasons:
        verdict = "inconclusive (" + ", ".join(reasons) + ")"
    else:
        verdict = "ours faster" if low >= 1.0 else "reference faster"
    met = ratio >= target and low >= 1.0 and not reasons
    return {
        "configs": {
            n: {"median": s.median, "min": s.low, "max": s.high, "disturbed_rounds": s.disturbed, "values": s.values}
            for n, s in spreads.items()
        },
        "ours": ours,
        "best_reference": best,
        "ratio": ratio,
        "ratio_range": [low, high],
        "verdict": verdict,
        "target": target,
        "target_met": met,
    }


def print_summary(label: str, summaries: list[Mapping[str, Any]], unit: str) -> None:
    """One cell: every configuration's median and min-max, then each of ours against the fastest reference."""
    print(f"\n{label}")
    first = summaries[0]
    width = max(len(n) for n in first["configs"]) + 2
    print(f"  {'configuration':<{width}}{'median':>10}{'min':>10}{'max':>10}  disturbed rounds  ({unit})")
    for name, c in first["configs"].items():
        mark = "  <- fastest reference" if name == first["best_reference"] else ""
        print(
            f"  {name:<{width}}{c['median']:>10.1f}{c['min']:>10.1f}{c['max']:>10.1f}"
            f"  {c['disturbed_rounds']:>16}{mark}"
        )
    for s in summaries:
        lo, hi = s["ratio_range"]
        print(
            f"  {s['ours']} / {s['best_reference']}: {s['ratio']:.2f} (range {lo:.2f}-{hi:.2f}); "
            f"{s['verdict']}; target {s['target']:.1f}x {'met' if s['target_met'] else 'not met'}"
        )
