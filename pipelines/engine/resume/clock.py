"""When a resumable save is due (pipelines/engine/resume/saves.py): once `resume.every_minutes` have passed since
the last save, by the main process's clock, read after every `CLOCK_STEPS`-th optimizer step and at each epoch's
end, whichever comes first; at every epoch end when `every_minutes` is null. A save's cost is mostly fixed
(DCP's planning and files, its writing thread's hold on the GIL), so saving at every end of short epochs would
cost a short run a large share of its time: by the clock, saves cost a bounded share of any run, and a crash
loses at most `every_minutes` of training. Under torch.distributed the main process's verdict is broadcast
(one number, through a gloo group: nothing waits on the device) so that every process saves at the same step,
whatever its own clock says."""

from __future__ import annotations

import time
from datetime import timedelta

import torch
import torch.distributed as dist

from pipelines.engine.runtime import Runtime

# Optimizer steps between two readings of the clock: few enough that a save comes soon after it is due, many
# enough that the broadcast costs nothing
CLOCK_STEPS = 10


class SaveClock:
    """The clock of `every_minutes` (None: no save between epoch ends; 0: one at every reading)."""

    def __init__(self, every_minutes: float | None, runtime: Runtime) -> None:
        self.every_s = None if every_minutes is None else every_minutes * 60
        self.runtime = runtime
        self.group: dist.ProcessGroup | None = None  # the broadcast's (None: the default group, gloo already)
        self.since = time.monotonic()  # when the last save, or the training, started

    def join(self, timeout: timedelta) -> None:
        """Under torch.distributed, on every rank at the same point: create the broadcast's gloo group where
        the default group is not one (NCCL's would read a number back from the device)."""
        if self.runtime.distributed and self.every_s is not None and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo", timeout=timeout)

    def restart(self) -> None:
        """A save (or the training) starts now."""
        self.since = time.monotonic()

    def due(self, step: int) -> bool:
        """Whether to save after optimizer step `step`, within an epoch."""
        if self.every_s is None or step % CLOCK_STEPS:
            return False
        return self._agreed(time.monotonic() - self.since >= self.every_s)

    def due_at_epoch_end(self) -> bool:
        """Whether to save at the end of an epoch."""
        return self.every_s is None or self._agreed(time.monotonic() - self.since >= self.every_s)

    def _agreed(self, verdict: bool) -> bool:
        """The main process's `verdict`, on every process."""
        if self.runtime.distributed:
            shared = torch.tensor(int(verdict))
            dist.broadcast(shared, src=0, group=self.group)
            verdict = bool(shared)
        return verdict
