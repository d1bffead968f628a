"""The training loop shared by every family and backend.

It gives: host-side seeded noise and batches (so a resumed run continues exactly), EMA via the steppers,
checkpoints every N steps with optimiser/RNG/data state and the logged history, resume from the latest
readable checkpoint (falling back past a truncated one with a warning), a stop on a non-finite loss that keeps
the last good checkpoint, a rich progress bar with loss and images/s, and sample grids.

A fresh run (no resume) never deletes an earlier run's checkpoints up front: :meth:`Trainer.clear_checkpoints`
marks them stale and they are removed only once this run's own first checkpoint is on disk, so a crash (or a
forgotten ``--resume``) before then still leaves the earlier resume state.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from imagegen.config import TrainConfig
from imagegen.data.loader import BatchStream, to_uint8
from imagegen.errors import TrainingError
from imagegen.fileio import remove_stale_temps
from imagegen.images import save_grid
from imagegen.profiling import phase
from imagegen.training.checkpoint import (
    UnreadableCheckpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from imagegen.training.distributed import is_writer
from imagegen.training.families.base import Family
from imagegen.training.steppers import Stepper, make_stepper

# (step, {metric: value}) -> None, e.g. MLflow logging; (step, png path, uint8 images) -> None for grids.
MetricsHook = Callable[[int, dict[str, float]], None]
GridHook = Callable[[int, Path, np.ndarray], None]
SampleFn = Callable[[Family, int, np.random.Generator], np.ndarray]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    step: int
    metrics: dict[str, float]
    images_per_sec: float
    ms_per_step: float
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None


class Trainer:
    def __init__(
        self,
        family: Family,
        stream: BatchStream,
        cfg: TrainConfig,
        seed: int,
        checkpoint_dir: Path,
        samples_dir: Path | None = None,
        sample_fn: SampleFn | None = None,
        on_metrics: MetricsHook | None = None,
        on_grid: GridHook | None = None,
        show_progress: bool = True,
        stepper: Stepper | None = None,
        dataset_hash: str | None = None,
    ) -> None:
        """``stepper``: one made for an earlier Trainer of a family with these very networks and phases (e.g.
        the previous round of a progressive distillation), reused with its compiled step; else a new one.
        ``dataset_hash``: the content hash of the data trained on, recorded in checkpoints so that a resume on
        other data is refused rather than silently continued."""
        self.dataset_hash = dataset_hash
        self.family = family
        self.stream = stream
        self.cfg = cfg
        self.seed = seed
        self.checkpoint_dir = Path(checkpoint_dir)
        self.samples_dir = samples_dir
        self.sample_fn = sample_fn
        self.on_metrics = on_metrics
        self.on_grid = on_grid
        self.show_progress = show_progress
        if stepper is not None:
            if stepper.family.networks is not family.networks or stepper.family.phases is not family.phases:
                raise ValueError("Trainer(stepper=...): the stepper was made for other networks or phases")
            stepper.family = family  # same networks and phases: the compiled step stays valid (fit() pulls)
        self.stepper = stepper or make_stepper(
            family, jit_compile=cfg.jit_compile, devices=cfg.devices, batch_size=stream.batch_size
        )
        stream.rows = self.stepper.local_rows  # multi-host: read only this process's rows
        self.noise_rng = np.random.default_rng([seed, 1])
        self.step = 0
        self.stopped_early = False
        self.history: list[dict[str, float]] = []  # rows logged by this process
        self.previous_history: list[dict[str, float]] = []  # rows up to the resumed checkpoint's step
        self.stale: tuple[Path, ...] = ()  # an earlier run's checkpoints, removed after our first one
        self.last_checkpoint: Path | None = None  # this run's (or the resumed) latest checkpoint
        remove_stale_temps(self.checkpoint_dir)  # half-written checkpoints of killed runs

    # ---------------------------------------------------------------------------------------------
    def loop_state(self) -> dict[str, Any]:
        state = {"step": self.step, "noise_rng": self.noise_rng.bit_generator.state, "stream": self.stream.state()}
        if self.family.host_state:
            state["family"] = dict(self.family.host_state)
        if self.dataset_hash is not None:
            state["dataset_hash"] = self.dataset_hash
        return state

    @property
    def full_history(self) -> list[dict[str, float]]:
        """The whole loss curve: the resumed checkpoint's rows, then this process's."""
        return [*self.previous_history, *self.history]

    def save(self) -> Path | None:
        self.stepper.push()
        if not is_writer():  # multi-host: process 0 writes; the others hold the same replicated state
            return self.last_checkpoint
        self.last_checkpoint = save_checkpoint(
            self.checkpoint_dir,
            self.family,
            self.step,
            self.loop_state(),
            keep=self.cfg.keep_checkpoints,
            history=self.full_history,
            stale=self.stale,
        )
        self.stale = ()
        return self.last_checkpoint

    def resume(self, path: Path | None = None) -> Path | None:
        """Restore the given checkpoint, else the newest readable one; returns it, or None if there is none.

        An unreadable (truncated, corrupt) newest checkpoint is skipped with a warning for the one before it;
        one of another architecture stops with a :class:`TrainingError`.
        """
        candidates = [path] if path is not None else [p for _, p in reversed(list_checkpoints(self.checkpoint_dir))]
        for i, candidate in enumerate(candidates):
            try:
                state = load_checkpoint(candidate, self.family)
            except UnreadableCheckpoint as exc:
                if path is not None or i == len(candidates) - 1:
                    raise
                log.warning("%s; resuming from the previous checkpoint %s instead", exc, candidates[i + 1])
                continue
            trained_on = state.get("dataset_hash")
            if trained_on and self.dataset_hash and trained_on != self.dataset_hash:
                raise TrainingError(
                    f"{candidate}: checkpoint was trained on dataset {trained_on[:19]}, not {self.dataset_hash[:19]}; "
                    "resume with the --data it was trained on, or start without --resume"
                )
            self.step = int(state["step"])
            self.noise_rng.bit_generator.state = state["noise_rng"]
            self.stream.restore(state["stream"])
            self.family.host_state.update(state.get("family", {}))
            self.previous_history = [row for row in state["history"] if row["step"] <= self.step]
            self.stepper.pull()
            self.last_checkpoint = candidate
            return candidate
        return None

    def clear_checkpoints(self) -> None:
        """Start afresh: the checkpoints now in the folder are removed once this run's first one is written."""
        self.stale = tuple(p for _, p in list_checkpoints(self.checkpoint_dir))

    # ---------------------------------------------------------------------------------------------
    def _check_finite(self, values: dict[str, float]) -> None:
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            last = self.last_checkpoint
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
            raise TrainingError(
                f"non-finite loss at step {self.step} ({', '.join(f'{k}={v}' for k, v in bad.items())}); "
                f"training stopped and {kept}. Lower the learning rate or check the data."
            )

    def _grid(self) -> None:
        if self.sample_fn is None or self.samples_dir is None or not is_writer():
            return
        self.stepper.push()
        images = to_uint8(self.sample_fn(self.family, self.cfg.grid_size, np.random.default_rng([self.seed, 2])))
        path = save_grid(self.samples_dir / f"step-{self.step:06d}.png", images)
        if self.on_grid:
            self.on_grid(self.step, path, images)

    def fit(self, total_steps: int) -> TrainResult:
        """Train until ``total_steps`` (counting steps already done before a resume).

        With ``train.max_minutes`` set, training also stops at the first log step past that wall-clock budget,
        writing a checkpoint there, so a time-limited run can be continued with ``--resume``.
        """
        cfg = self.cfg
        deadline = time.perf_counter() + 60.0 * cfg.max_minutes if cfg.max_minutes else None
        self.stopped_early = False
        self.stepper.pull()
        values: dict[str, float] = {}
        timed_steps, timed_seconds = 0, 0.0
        batch_size = self.stream.batch_size
        last_ckpt: Path | None = None
        columns = (
            TextColumn(f"[bold]{self.family.name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, disable=not self.show_progress) as progress:
            task = progress.add_task("train", total=total_steps, completed=self.step, status="")
            window_start, window_steps = time.perf_counter(), 0
            first = True
            while self.step < total_steps:
                batch = next(self.stream)
                feed = {
                    "images": batch.images,
                    "labels": batch.labels,
                    **self.family.noise(self.noise_rng, batch.labels),
                }
                if batch.captions is not None:  # token ids of a dataset with captions (a caption DDPM reads them)
                    feed["captions"] = batch.captions
                with phase("train.first_step" if first else "train.steps", "compile" if first else "work"):
                    metrics = self.stepper.step(feed)
                    if self.family.adapt is not None:  # host-side state that follows the metrics (ADA)
                        metrics = {**metrics, **self.family.adapt(metrics)}
                self.step += 1
                window_steps += 1
                progress.advance(task)
                at_log = self.step % cfg.log_every == 0
                out_of_time = deadline is not None and at_log and time.perf_counter() > deadline
                at_ckpt = self.step % cfg.checkpoint_every == 0 or self.step == total_steps or out_of_time
                at_grid = self.step % cfg.sample_every == 0 or self.step == total_steps or out_of_time
                if first or at_log or at_ckpt or at_grid:
                    with phase("train.first_step" if first else "train.steps", "compile" if first else "work"):
                        values = {k: float(np.asarray(v)) for k, v in metrics.items()}  # syncs the device
                    now = time.perf_counter()
                    if first:  # the first step includes compilation: keep it out of the speed
                        first = False
                    else:
                        timed_steps += window_steps
                        timed_seconds += now - window_start
                    rate = batch_size * timed_steps / timed_seconds if timed_seconds else float("nan")
                    window_start, window_steps = now, 0
                    self._check_finite(values)
                    row = {"step": float(self.step), **values, "images_per_sec": rate}
                    self.history.append(row)
                    if self.on_metrics:
                        self.on_metrics(self.step, {**values, "images_per_sec": rate})
                    status = " ".join(f"{k}={v:.4f}" for k, v in values.items())
                    progress.update(task, status=f"{status} {rate:,.0f} img/s")
                if at_ckpt:
                    with phase("train.checkpoints", "io"):
                        last_ckpt = self.save()
                if at_grid:
                    with phase("train.sample_grids", "work"):
                        self._grid()
                if at_ckpt or at_grid:  # keep checkpoint and sampling time out of images/s
                    window_start = time.perf_counter()
                if out_of_time:
                    self.stopped_early = True
                    break
        self.stepper.push()
        rate = batch_size * timed_steps / timed_seconds if timed_seconds else float("nan")
        ms = 1000.0 * timed_seconds / timed_steps if timed_steps else float("nan")
        return TrainResult(self.step, values, rate, ms, self.history, last_ckpt)
