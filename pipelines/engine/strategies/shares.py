"""What the strategies whose processes each take a share of every global batch (one process, ddp, fsdp) do
alike, as functions they compose: the micro-batches of a step and their gradient, the epoch's loss means
summed over the processes, and validation with each process scoring its share of the split."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch import nn

from pipelines.engine.inference import INFERENCE_BATCH_SIZE, ValidationSplit
from pipelines.engine.objective import Batch
from pipelines.engine.runtime import Runtime
from pipelines.engine.strategies.base import BatchOf, StepTerms
from pipelines.engine.tensors import is_sharded

Forward = Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]  # a batch's loss and its terms
Unsynced = Callable[[], AbstractContextManager[None]]  # backward passes whose gradients are not yet reduced


def accumulate(step_rows: torch.Tensor, batch_of: BatchOf, forward: Forward, runtime: Runtime, micro_steps: int,
               no_sync: Unsynced = nullcontext) -> Iterator[StepTerms]:
    """This process's share of the global batch `step_rows` in up to `micro_steps` micro-batches, their
    gradients accumulated into `.grad` (all but the last under `no_sync`); yield each one's size, loss and
    terms."""
    micros, rows = micro_batches(step_rows, runtime, micro_steps), step_rows.shape[0]
    for index, micro in enumerate(micros):
        batch, size = batch_of(micro), micro.shape[0]
        with no_sync() if index < len(micros) - 1 else nullcontext():
            with runtime.autocast():
                loss, terms = forward(batch)
            # The step's gradient is that of the mean over all its rows: DDP and FSDP average the processes'
            # gradients, so each micro-batch's mean loss weighs its share of the step's rows times N (1 for a
            # process's whole, equal share; more or less where the rows do not divide evenly).
            share = size * runtime.world_size / rows
            (loss * share if share != 1 else loss).backward()
        yield size, loss, terms


def micro_batches(step_rows: torch.Tensor, runtime: Runtime, micro_steps: int) -> list[torch.Tensor]:
    """The rows of this process's share of the global batch `step_rows`, in up to `micro_steps` micro-batches:
    the same number on every rank (DDP syncs on the last), none of them empty."""
    if runtime.world_size == 1 and micro_steps == 1:  # (the common case, without the ops: a step's host time)
        return [step_rows]
    rows = step_rows[runtime.rank :: runtime.world_size]
    return list(torch.tensor_split(rows, max(1, min(micro_steps, step_rows.shape[0] // runtime.world_size))))


def summed_means(sums: dict[str, torch.Tensor | float], runtime: Runtime) -> dict[str, float]:
    """The epoch's mean of each loss term over every process's images (`sums` ends with their count)."""
    totals = torch.stack([torch.as_tensor(value, device=runtime.device, dtype=torch.float32)
                          for value in sums.values()])
    if runtime.distributed:
        dist.all_reduce(totals)
    return dict(zip(sums, (totals[:-1] / totals[-1]).tolist()))


def validate_shares(model: nn.Module, split: ValidationSplit, runtime: Runtime) -> dict[str, float]:
    """Validation loss and accuracy on the whole split. Every rank holds the same weights (FSDP gathers them
    block by block) and scores its own contiguous share of the split; their sums are gathered and added in
    rank order, so every rank gets the same figures and takes the same early-stopping decision."""
    if not runtime.distributed:
        return split.metrics(model)
    world, rank = runtime.world_size, runtime.rank
    bounds = [len(split) * index // world for index in range(world + 1)]  # shares differ by a row at most
    batches = max(1, math.ceil(math.ceil(len(split) / world) / INFERENCE_BATCH_SIZE))
    sums = split.sums(model, bounds[rank], bounds[rank + 1], batches)
    if is_sharded(model):
        model.reshard()  # FSDP keeps the root's weights gathered after a forward; the EMA may be swapped out next
    every = [torch.empty_like(sums) for _ in range(world)]
    dist.all_gather(every, sums)
    total = sum(every)
    assert isinstance(total, torch.Tensor)  # a sum of world_size >= 1 tensors
    loss, correct = total.tolist()
    return {"val_loss": loss / len(split), "val_accuracy": correct / len(split)}


class Trainee(nn.Module):
    """The model and its objective as one module, which DDP wraps and FSDP shards the parts of:
    forward(batch) runs the objective, and so the model."""

    def __init__(self, model: nn.Module, objective: nn.Module) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective(self.model, batch)

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes that leave FSDP's gradients unreduced (all micro-batches of a step but the last)."""
        sharded = [module for module in (self.model, self.objective) if is_sharded(module)]
        for module in sharded:
            module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            for module in sharded:
                module.set_requires_gradient_sync(True)
