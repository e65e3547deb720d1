"""A training run's progress bar, drawn in a terminal only: epoch and optimizer step out of the run's, images per
second and the last validation accuracy, on the main process's stderr (tqdm).

Outside a terminal (DVC's or the flow's log, CI, a torchrun worker, whose output torchrun pipes) nothing is drawn
and the log is line for line what it was. While a bar is up, the log's lines go through tqdm, so that each is
written above the bar instead of through it, in the same format.

A step costs the bar a clock read: its counts are Python ints the loop already has (no device tensor is read),
its rate is images over wall time, and it is redrawn at most every `REDRAW_SECONDS`."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

REDRAW_SECONDS = 0.25
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| step {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


class NoBar:
    """No bar: not a terminal, or not the main process."""

    def step(self, step: int, images: int) -> None:
        """Optimizer step `step` (0-based, over the whole run) took `images` images."""

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Epoch `epoch` (0-based) ended with `metrics`."""


class ProgressBar(NoBar):
    """The bar of a run of `epochs` epochs of `steps_per_epoch` optimizer steps, `first_step` of them already
    taken (a resumed run), drawn on `stream`."""

    def __init__(self, epochs: int, steps_per_epoch: int, first_step: int, stream: TextIO) -> None:
        self.epochs, self.steps_per_epoch = epochs, max(steps_per_epoch, 1)
        self.bar = tqdm(total=epochs * steps_per_epoch, initial=first_step, desc=self.epoch_text(first_step + 1),
                        file=stream, bar_format=BAR_FORMAT, mininterval=0, miniters=1, dynamic_ncols=True)
        self.done = first_step  # steps taken, drawn or not
        self.started: float | None = None  # wall time at the first step of this process (startup excluded)
        self.images, self.accuracy = 0, ""
        self.drawn_at = 0.0

    def epoch_text(self, step: int) -> str:
        """The epoch that optimizer step `step` (1-based) belongs to, out of the run's."""
        return f"epoch {min((max(step, 1) - 1) // self.steps_per_epoch + 1, self.epochs)}/{self.epochs}"

    def step(self, step: int, images: int) -> None:
        now = time.perf_counter()
        if self.started is None:
            self.started = now
        self.done, self.images = step + 1, self.images + images
        if now - self.drawn_at >= REDRAW_SECONDS:
            self.draw(now)

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if "val_accuracy" in metrics:
            self.accuracy = f"val_accuracy {metrics['val_accuracy']:.4f}"
        self.draw(time.perf_counter())

    def draw(self, now: float) -> None:
        """Bring the bar to the steps taken, with the images per second since the first step."""
        seconds = now - (self.started or now)
        rate = f"{self.images / seconds:,.0f} img/s" if seconds > 0 else ""
        self.bar.set_description_str(self.epoch_text(self.done), refresh=False)
        self.bar.set_postfix_str(", ".join(text for text in (rate, self.accuracy) if text), refresh=False)
        if self.done > self.bar.n:
            self.bar.update(self.done - self.bar.n)  # draws (mininterval 0), and times the steps for `remaining`
        else:
            self.bar.refresh()
        self.drawn_at = now

    def close(self) -> None:
        """Leave the bar as the run ended, on its own line."""
        if self.done > self.bar.n:
            self.draw(time.perf_counter())
        self.bar.close()


@contextmanager
def progress_bar(is_main: bool, epochs: int, steps_per_epoch: int, first_step: int = 0,
                 stream: TextIO | None = None) -> Iterator[NoBar]:
    """The run's bar on `stream` (stderr) when it is a terminal and this is the main process, the log's lines
    written above it while it is up; else `NoBar`, and the log untouched."""
    stream = stream or sys.stderr
    if not (is_main and stream.isatty()):
        yield NoBar()
        return
    bar = ProgressBar(epochs, steps_per_epoch, first_step, stream)
    try:
        with logging_redirect_tqdm():
            yield bar
    finally:
        bar.close()
