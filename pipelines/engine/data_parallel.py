"""`DataParallel`, what `parallelize` (pipelines/engine/parallel.py) returns under ddp, fsdp and on one
process: every process holds the whole model, or its shards, and takes its share of each global batch. The
pipeline's classes (pipelines/engine/pipeline.py) build on it, and `parallelize` picks among them all, so it
lives below both."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel

from pipelines.config.distributed import DistributedParams
from pipelines.config.training import GradClipParams
from pipelines.data.images import ImageSet
from pipelines.engine.inference import INFERENCE_BATCH_SIZE, val_sums, validate
from pipelines.engine.objective import Batch, Objective
from pipelines.engine.optim import clip_gradients
from pipelines.engine.runtime import Runtime
from pipelines.engine.schedules import steps_per_epoch

BatchOf = Callable[[torch.Tensor], Batch]  # a batch of the training set's rows, on the device
StepTerms = tuple[int, torch.Tensor, dict[str, torch.Tensor]]  # images, loss and loss terms of one micro-batch


class Trainee(nn.Module):
    """The model and its objective as one module: forward(batch) runs the objective, and so the model."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective(self.model, batch)

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes that leave their gradients unreduced (all micro-batches of a step but the last)."""
        sharded = [module for module in (self.model, self.objective) if isinstance(module, FSDPModule)]
        for module in sharded:
            module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            for module in sharded:
                module.set_requires_gradient_sync(True)


class DataParallel:
    """Every process holds the whole model (or, under FSDP, its shards of every block) and takes its share of
    each global batch; a step's gradient is that of the mean loss over the global batch."""

    def __init__(self, model: nn.Module, objective: Objective, runtime: Runtime, params: DistributedParams,
                 wrapped: DistributedDataParallel | Trainee | None = None) -> None:
        self.model, self.objective, self.runtime, self.params = model, objective, runtime, params
        self.wrapped = wrapped  # DDP or FSDP's Trainee; None in one process
        # What this process trains (the optimizer's parameters, each once: an objective may keep a reference to
        # the model, and so list its parameters too) and saves to resume (pipelines/engine/resume.py).
        both = [*model.parameters(), *objective.parameters()]
        self.trained = list({id(parameter): parameter for parameter in both}.values())
        self.checkpointed: nn.Module = nn.ModuleDict({"model": model, "objective": objective})
        self.held: nn.Module = model  # the model's weights as this process holds them (under FSDP, its shards)
        self.loss_rank = 0  # the rank whose loss sums `epoch_means` reads (all are all-reduced)
        self.batch_shares = runtime.world_size  # the processes that share out each batch's rows

    def steps_per_epoch(self, train_set: ImageSet, batch_size: int) -> int:
        """Optimizer steps per epoch of `train_set` in global batches of `batch_size`."""
        return steps_per_epoch(len(train_set), batch_size, self.runtime.world_size)

    def backward(self, step_rows: torch.Tensor, batch_of: BatchOf) -> Iterator[StepTerms]:
        """Accumulate the gradient of one optimizer step over the global batch `step_rows` into `.grad`;
        yield each of this process's micro-batches' size, loss and terms."""
        rows = step_rows[self.runtime.rank :: self.runtime.world_size]
        # The same number of micro-batches on every rank (DDP syncs on the last), none of them empty.
        micro_steps = max(1, min(self.params.grad_accum_steps, len(step_rows) // self.runtime.world_size))
        for index, micro in enumerate(torch.tensor_split(rows, micro_steps)):
            batch = batch_of(micro)
            last = index == micro_steps - 1
            with self.wrapped.no_sync() if self.wrapped is not None and not last else nullcontext():
                with self.runtime.autocast():
                    loss, terms = self.wrapped(batch) if self.wrapped is not None else self.objective(self.model, batch)
                # The step's gradient is that of the mean over all its rows: DDP and FSDP average the processes'
                # gradients, so each micro-batch's mean loss weighs its share of the step's rows times N (1 for
                # a process's whole, equal share; more or less where the rows do not divide evenly).
                share = len(micro) * self.runtime.world_size / len(step_rows)
                (loss * share if share != 1 else loss).backward()
            yield len(micro), loss, terms

    def clip_gradients(self, clip: GradClipParams | None) -> None:
        """Clip the step's gradients as `regularization.grad_clip` says (the norm is that of all of them)."""
        clip_gradients(self.trained, clip)

    def epoch_means(self, sums: dict[str, torch.Tensor | float]) -> dict[str, float]:
        """The epoch's mean of each loss term over every process's images (`sums` ends with their count)."""
        totals = torch.stack([torch.as_tensor(value, device=self.runtime.device, dtype=torch.float32)
                              for value in sums.values()])
        if self.runtime.distributed:
            dist.all_reduce(totals)
        return dict(zip(sums, (totals[:-1] / totals[-1]).tolist()))

    def validate(self, model: nn.Module, val_set: ImageSet) -> dict[str, float]:
        """Validation loss and accuracy on the whole split. Every rank holds the same weights (FSDP gathers them
        block by block) and scores its own contiguous share of the split; their sums are gathered and added in
        rank order, so every rank gets the same figures and takes the same early-stopping decision."""
        if not self.runtime.distributed:
            return validate(model, val_set, self.runtime.device)
        world, rank = self.runtime.world_size, self.runtime.rank
        bounds = [len(val_set) * index // world for index in range(world + 1)]  # shares differ by a row at most
        batches = max(1, math.ceil(math.ceil(len(val_set) / world) / INFERENCE_BATCH_SIZE))
        sums = val_sums(model, val_set, bounds[rank], bounds[rank + 1], batches, self.runtime.device)
        if isinstance(model, FSDPModule):
            model.reshard()  # FSDP keeps the root's weights gathered after a forward; the EMA may be swapped out next
        every = [torch.empty_like(sums) for _ in range(world)]
        dist.all_gather(every, sums)
        total = sum(every)
        assert isinstance(total, torch.Tensor)  # a sum of world_size >= 1 tensors
        loss, correct = total.tolist()
        return {"val_loss": loss / len(val_set), "val_accuracy": correct / len(val_set)}

    def gather(self) -> None:
        """Make the main process's model whole for saving (FSDP gathers in `full_state_dict` instead)."""
