"""A training run's log: each epoch's line in the stage's log on the main process, and, where the stage gives a
folder, dvclive's files in it (the learning rate every step; the loss terms, validation loss and accuracy
every epoch; the run's figures at its end), written atomically: the folder appears whole when the run ends."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch
from dvclive import Live

from pipelines.core.atomic import atomic_path
from pipelines.engine.runtime import Runtime

log = logging.getLogger(__name__)


class RestoresLog(Protocol):
    """What a resumed run's log is continued from (pipelines/engine/resume/)."""

    resumed: Path | None

    def restore_log(self, live_dir: Path) -> None: ...


class TrainingLog:
    """The epoch lines alone: a process other than the main one, or a run the stage keeps no files of."""

    folder: Path | None = None

    def __init__(self, runtime: Runtime, epochs: int) -> None:
        self.runtime, self.epochs = runtime, epochs
        self.started, self.images = time.perf_counter(), 0

    def step(self, step: int, images: int, lr: float) -> None:
        """Optimizer step `step` (0-based) took `images` images at learning rate `lr`."""
        self.images += images

    def epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        """Epoch `epoch` (0-based) ended after optimizer step `step` with `metrics`."""
        if self.runtime.is_main:
            summary = " ".join(f"{name} {value:.4f}" for name, value in metrics.items())
            log.info("epoch %d/%d step %d %s", epoch + 1, self.epochs, step, summary)

    def end(self, result: dict[str, float]) -> None:
        """The run is over with `result`."""


class LiveLog(TrainingLog):
    """The epoch lines and dvclive's files in `folder`."""

    def __init__(self, runtime: Runtime, epochs: int, folder: Path, resumed: bool) -> None:
        super().__init__(runtime, epochs)
        self.folder = folder
        self.live = Live(dir=str(folder), resume=resumed, save_dvc_exp=False, dvcyaml=None, report=None)

    def step(self, step: int, images: int, lr: float) -> None:
        super().step(step, images, lr)
        self.live.step = step
        self.live.log_metric("lr", lr)

    def epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.live.step = step - 1  # epoch metrics sit at the epoch's last optimizer step
        self.live.log_metric("epoch", epoch + 1)
        for name, metric in metrics.items():
            self.live.log_metric(name, metric)
        super().epoch(epoch, step, metrics)

    def end(self, result: dict[str, float]) -> None:
        self.live.summary.update(result)
        seconds = time.perf_counter() - self.started
        self.live.log_metric("train_seconds", seconds, plot=False)
        self.live.log_metric("train_images_per_second", self.images / seconds, plot=False)
        if self.runtime.device.type == "cuda":
            self.live.log_metric("peak_gpu_memory_gib", torch.cuda.max_memory_allocated(self.runtime.device) / 2**30,
                                 plot=False)
        self.live.end()


@contextmanager
def open_training_log(folder: Path | None, runtime: Runtime, epochs: int,
                      resume: RestoresLog) -> Iterator[TrainingLog]:
    """The run's log: with dvclive's files in `folder` (continuing those of the save `resume` resumed) on the
    main process, the epoch lines alone elsewhere or without a folder."""
    if folder is None or not runtime.is_main:
        yield TrainingLog(runtime, epochs)
        return
    with atomic_path(folder) as live_dir:
        resume.restore_log(live_dir)
        yield LiveLog(runtime, epochs, live_dir, resumed=resume.resumed is not None)
