"""A run whose loss or weights stopped being finite is stopped, so that it never replaces a good model.

A learning rate too large, or logits with NaN in them, make the loss NaN or infinite within a few steps, and
every weight soon after; a run that went on would still save its model, which DVC would then cache. The
watch keeps a copy of the epoch's loss sum after each optimizer step, on the device (one copy a step, no host
sync), and `check` finds the first step whose sum was not finite, with a count of the non-finite weights this
process holds, at the points where the loop waits on the device anyway: each epoch's end and before each save of the
training state, so a diverged state is never saved either. The check is a collective (every rank calls it
at the same point, and all see the same verdict), since under DDP, FSDP or a pipeline each rank sees its
share of the losses and of the weights.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from pipelines.core.errors import DataError
from pipelines.engine.runtime import Runtime
from pipelines.engine.tensors import local

NONE = 2**62  # "no step yet": larger than any step, so the smallest over the ranks is the first bad one


class TrainingDiverged(DataError):
    """Training stopped because its loss or weights are no longer finite; the model file is left as it was."""

    def __init__(self, epoch: int, steps: tuple[int, int], lrs: tuple[float, float], loss: bool, bad_weights: int,
                 model: str = "", advice: str = "") -> None:
        self.epoch = epoch  # 1-based
        self.steps = steps  # the first step whose loss was not finite (twice), else the steps since the last check
        self.lrs = lrs  # the learning rates of those steps (lowest, highest)
        self.loss, self.bad_weights = loss, bad_weights  # whether a loss was not finite; how many tensor values
        rate = f"learning rate {lrs[0]:.4g}" if lrs[0] == lrs[1] else f"learning rates {lrs[0]:.4g} to {lrs[1]:.4g}"
        when = f"step {steps[0]}" if steps[0] == steps[1] else f"steps {steps[0]} to {steps[1]}"
        what = "the loss stopped being finite at" if loss else "the weights stopped being finite in"
        super().__init__(f"{model}{': ' if model else ''}training diverged: {what} optimizer {when} of epoch {epoch} "
                         f"({rate}); {bad_weights:,} values of the weights and batch norm statistics are NaN or "
                         f"infinite{'. ' if advice else ''}{advice}")

    def about(self, model: str, advice: str) -> TrainingDiverged:
        """The same error, naming the model and what to do."""
        return TrainingDiverged(self.epoch, self.steps, self.lrs, self.loss, self.bad_weights, model, advice)


class DivergenceWatch:
    """Watches the losses of a run's steps and the weights and buffers of `held` (what this process holds of the
    model)."""

    def __init__(self, held: nn.Module, runtime: Runtime) -> None:
        self.held, self.runtime = held, runtime
        # The weights and buffers (batch norm's running statistics) that can hold a NaN: the floating ones
        self.tensors = [tensor for tensor in (*held.parameters(), *held.buffers()) if tensor.is_floating_point()]
        self.sums: dict[int, torch.Tensor] = {}  # the loss sum after each step since the last check (on the device)
        self.lrs: dict[int, float] = {}  # each step's learning rate since the last check (host floats)

    def watch(self, step: int, loss_sum: torch.Tensor | float | None, lr: float) -> None:
        """Note optimizer step `step`, taken at learning rate `lr`, and the epoch's loss sum after it (None on a
        rank that sees no loss): a sum stays NaN or infinite from the first step whose loss was."""
        if isinstance(loss_sum, torch.Tensor):
            self.sums[step] = loss_sum.clone()  # (the loop adds to the sum in place)
        self.lrs[step] = lr

    def check(self, epoch: int) -> None:
        """TrainingDiverged (on every rank) if a step since the last check had a loss that is not finite, or a
        weight is; `epoch` is the 0-based epoch under way."""
        finite = [torch.isfinite(local(tensor).detach()).all() for tensor in self.tensors]  # (values: on failure)
        bad_tensors = torch.stack(finite).logical_not().sum() if finite else torch.zeros((), device=self.runtime.device)
        first = torch.tensor(NONE, device=self.runtime.device)
        if self.sums:
            watched = torch.tensor(list(self.sums), device=self.runtime.device)
            first = torch.where(torch.isfinite(torch.stack(list(self.sums.values()))), first, watched).min()
        if self.runtime.distributed:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
            dist.all_reduce(bad_tensors)
        step = int(first)
        if step == NONE and int(bad_tensors) == 0:
            self.sums.clear()
            self.lrs.clear()
            return
        steps = (step, step) if step != NONE else (min(self.lrs), max(self.lrs))
        lrs = [lr for at, lr in self.lrs.items() if steps[0] <= at <= steps[1]]
        raise TrainingDiverged(epoch + 1, steps, (min(lrs), max(lrs)), step != NONE, self.bad_values())

    def bad_values(self) -> int:
        """How many values of the weights and buffers are not finite, over every rank (a collective)."""
        count = sum(((~torch.isfinite(local(tensor).detach())).sum() for tensor in self.tensors),
                    torch.zeros((), dtype=torch.int64, device=self.runtime.device))
        if self.runtime.distributed:
            dist.all_reduce(count)
        return int(count)
