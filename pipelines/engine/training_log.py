"""A training run's log: each epoch's line in the stage's log on the main process, a progress bar there when its
stderr is a terminal (pipelines/engine/progress.py), and, where the stage gives a folder, dvclive's files in it
(the learning rate every step; the loss terms, validation loss and accuracy every epoch; the run's figures at its
end), written atomically: the folder appears whole when the run ends.

The files are dvclive's layout (`plots/metrics/<name>.tsv`, rows of step and value; `metrics.json`, the last
value of each and the step), which `dvc plots`, `dvc metrics` and the report read, written here rather than by
dvclive's `Live`: creating a `Live` looks up the DVC repository and git and imports DVC's plugins, about half a
second of every training stage, for experiment tracking that this pipeline leaves off (its stages are DVC's).
No file is touched while training: the whole history stays in memory (a number a step) and the files are
written once, when the run ends (the folder appears then in any case). A resumable save holds the history
(pipelines/engine/resume/), which the resumed run continues, so that its files end as an uninterrupted run's."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from pipelines.core.atomic import atomic_path
from pipelines.engine.progress import NoBar, progress_bar
from pipelines.engine.runtime import Runtime

log = logging.getLogger(__name__)

# What a log has logged, as a save holds it: "lr", each step's learning rate (step i at index i), and
# "epochs", each epoch's (optimizer steps taken by its end, {metric: value}), its number as metric "epoch"
History = dict[str, list[Any]]


class TrainingLog:
    """The epoch lines alone: a process other than the main one, or a run the stage keeps no files of."""

    history: History | None = None  # what a save keeps of the log (none: nothing to write anew)

    def __init__(self, runtime: Runtime, epochs: int, bar: NoBar = NoBar()) -> None:
        self.runtime, self.epochs, self.bar = runtime, epochs, bar
        self.started, self.images = time.perf_counter(), 0

    def step(self, step: int, images: int, lr: float) -> None:
        """Optimizer step `step` (0-based) took `images` images at learning rate `lr`."""
        self.images += images
        self.bar.step(step, images)

    def epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        """Epoch `epoch` (0-based) ended after optimizer step `step` with `metrics`."""
        self.bar.epoch(epoch, metrics)
        if self.runtime.is_main:
            summary = " ".join(f"{name} {value:.4f}" for name, value in metrics.items())
            log.info("epoch %d/%d step %d %s", epoch + 1, self.epochs, step, summary)

    def end(self, result: dict[str, float]) -> None:
        """The run is over with `result`."""


class LiveLog(TrainingLog):
    """The epoch lines and dvclive's files in `folder`, written from `history` (a resumed run's, continued)."""

    def __init__(self, runtime: Runtime, epochs: int, folder: Path, history: History | None,
                 bar: NoBar = NoBar()) -> None:
        super().__init__(runtime, epochs, bar)
        self.folder, self.plots = folder, folder / "plots" / "metrics"
        self.plots.mkdir(parents=True, exist_ok=True)  # (a killed run leaves it, for its rerun to sweep)
        self.history: History = history or {"lr": [], "epochs": []}

    def step(self, step: int, images: int, lr: float) -> None:
        super().step(step, images, lr)
        self.history["lr"].append(lr)

    def epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.history["epochs"].append((step, {"epoch": epoch + 1, **metrics}))
        super().epoch(epoch, step, metrics)

    def end(self, result: dict[str, float]) -> None:
        summary = self.write()
        seconds = time.perf_counter() - self.started
        summary |= result | {"train_seconds": seconds, "train_images_per_second": self.images / seconds}
        if self.runtime.device.type == "cuda":
            summary["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.runtime.device) / 2**30
        if self.history["epochs"]:  # dvclive's summary ends with the last epoch's step
            summary["step"] = self.history["epochs"][-1][0] - 1
        with (self.folder / "metrics.json").open("w", encoding="utf-8") as file:
            json.dump({name: logged(value) for name, value in summary.items()}, file, indent=4)
            file.write("\n")

    def write(self) -> dict[str, Any]:
        """Write the history's files: each step's learning rate, then each epoch's metrics at its last optimizer
        step; return each one's last value."""
        rates, summary = self.history["lr"], {}
        self.write_metric("lr", list(enumerate(rates)))
        if rates:
            summary["lr"] = rates[-1]
        rows: dict[str, list[tuple[int, float]]] = {}
        for step, metrics in self.history["epochs"]:
            for name, value in metrics.items():
                rows.setdefault(name, []).append((step - 1, value))
            summary |= metrics
        for name, values in rows.items():
            self.write_metric(name, values)
        return summary

    def write_metric(self, name: str, rows: list[tuple[int, float]]) -> None:
        """Metric `name`'s file of (step, value) rows, as dvclive writes it."""
        with (self.plots / f"{name}.tsv").open("w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file, delimiter="\t", lineterminator=os.linesep)
            writer.writerow(("step", name))
            writer.writerows((step, logged(value)) for step, value in rows)


def logged(value: float) -> float | str:
    """A value as dvclive logs it: a number, or the text of one that is not finite (nan, inf)."""
    return value if math.isfinite(value) else str(value)


@contextmanager
def open_training_log(folder: Path | None, runtime: Runtime, epochs: int, history: History | None,
                      steps_per_epoch: int, first_step: int = 0) -> Iterator[TrainingLog]:
    """The run's log: with dvclive's files in `folder` on the main process (`history`: the log of the save
    this run resumed, which it continues), the epoch lines alone elsewhere or without a folder; and the bar of
    `epochs` epochs of `steps_per_epoch` steps, `first_step` of them already taken, where a terminal shows it."""
    with progress_bar(runtime.is_main, epochs, steps_per_epoch, first_step) as bar:
        if folder is None or not runtime.is_main:
            yield TrainingLog(runtime, epochs, bar)
            return
        with atomic_path(folder) as live_dir:
            yield LiveLog(runtime, epochs, live_dir, history, bar)
