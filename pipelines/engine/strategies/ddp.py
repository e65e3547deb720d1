"""`distributed.strategy: ddp`: every process holds the whole model and takes its share of each global batch;
DistributedDataParallel over the model and the objective together (so an objective's own parameters, an
adapter, are averaged too), with SyncBatchNorm when `sync_batchnorm`. A live teacher runs whole on every
process, where the objective placed it."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipelines.config.distributed import DistributedParams
from pipelines.config.training import GradClipParams
from pipelines.data.images import ImageSet
from pipelines.engine.batch_sharing import buffers_in_step, share_batches
from pipelines.engine.inference import ValidationSplit
from pipelines.engine.objective import Objective
from pipelines.engine.optim import clip_gradients
from pipelines.engine.runtime import Runtime
from pipelines.engine.schedules import steps_per_epoch
from pipelines.engine.strategies.base import (BatchOf, Layout, StateDict, StepTerms, compile_whole, full_state_dict,
                                               place, trained_parameters)
from pipelines.engine.strategies.shares import Trainee, accumulate, micro_batches, summed_means, validate_shares


class DDP:
    """The model replicated on every process, its gradients averaged by DDP (see the module's doc)."""

    def __init__(self, runtime: Runtime, params: DistributedParams) -> None:
        self.runtime, self.params = runtime, params

    def prepare(self, model: nn.Module, objective: Objective, train_set: ImageSet, batch_size: int) -> Layout:
        place(model, objective, train_set, self.runtime, on_device=True)
        share_batches(objective, dist.group.WORLD)  # each process computes the loss of its share of every batch
        compile_whole(model, objective, self.runtime)
        if self.params.sync_batchnorm:
            for name, child in list(model.named_children()):  # in place: `model` stays the module the caller holds
                setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        device_ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
        trainee = Trainee(model, objective)
        # What the objective keeps alike on every process itself (crd's memory banks) is not broadcast from rank 0
        # before each forward, as the other buffers (batch norm's statistics) are.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            trainee, [f"objective.{name}" for name in buffers_in_step(objective)])
        self.wrapped = DistributedDataParallel(trainee, device_ids=device_ids)
        self.model, self.objective = model, objective
        self.trained = trained_parameters(model, objective)
        return Layout(trained=self.trained, held=model, saved=nn.ModuleDict({"model": model, "objective": objective}),
                      steps_per_epoch=steps_per_epoch(len(train_set), batch_size, self.runtime.world_size,
                                                      self.runtime.speed.compile),
                      batch_shares=self.runtime.world_size, loss_rank=0)

    def backward(self, step_rows: torch.Tensor, batch_of: BatchOf) -> Iterator[StepTerms]:
        return accumulate(step_rows, batch_of, self.wrapped, self.runtime, self.params.grad_accum_steps,
                          self.wrapped.no_sync)

    def reads(self, step_rows: torch.Tensor) -> list[torch.Tensor]:
        return micro_batches(step_rows, self.runtime, self.params.grad_accum_steps)

    def clip_gradients(self, clip: GradClipParams | None) -> None:
        clip_gradients(self.trained, clip)

    def epoch_means(self, sums: dict[str, torch.Tensor | float]) -> dict[str, float]:
        return summed_means(sums, self.runtime)

    def validate(self, model: nn.Module, split: ValidationSplit) -> dict[str, float]:
        return validate_shares(model, split, self.runtime)

    def state_dicts(self) -> tuple[StateDict, StateDict]:
        return full_state_dict(self.model), full_state_dict(self.objective)
