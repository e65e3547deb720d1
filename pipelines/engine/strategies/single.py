"""One process holding the whole model: no wrapper, nothing to reduce. `distributed.strategy: pipeline` on
one process is this too, as one stage of every layer: each batch still flows in `microbatches` micro-batches
(their gradients accumulated) and an epoch's last, incomplete batch is left out, so the run trains as a
pipeline of any number of stages does, and resumes its saves."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from pipelines.config.distributed import DistributedParams
from pipelines.config.training import GradClipParams
from pipelines.data.images import ImageSet
from pipelines.engine.batch_sharing import share_batches
from pipelines.engine.inference import ValidationSplit
from pipelines.engine.objective import Objective
from pipelines.engine.optim import clip_gradients
from pipelines.engine.runtime import Runtime
from pipelines.engine.schedules import steps_per_epoch
from pipelines.engine.strategies.base import (BatchOf, Layout, StateDict, StepTerms, compile_whole, full_state_dict,
                                               place, trained_parameters)
from pipelines.engine.strategies.pipeline_stages import pipeline_steps
from pipelines.engine.strategies.shares import accumulate, micro_batches, summed_means


class OneProcess:
    """The whole model on this process's device (see the module's doc)."""

    def __init__(self, runtime: Runtime, params: DistributedParams) -> None:
        self.runtime, self.params = runtime, params
        self.one_stage = params.strategy == "pipeline"
        self.micro_steps = params.microbatches if self.one_stage else params.grad_accum_steps

    def prepare(self, model: nn.Module, objective: Objective, train_set: ImageSet, batch_size: int) -> Layout:
        place(model, objective, train_set, self.runtime, on_device=True)
        share_batches(objective, None)  # this process sees every row
        compile_whole(model, objective, self.runtime)
        self.model, self.objective = model, objective
        self.trained = trained_parameters(model, objective)
        steps = (pipeline_steps(len(train_set), batch_size, self.params.microbatches) if self.one_stage
                 else steps_per_epoch(len(train_set), batch_size, 1, self.runtime.speed.compile))
        return Layout(trained=self.trained, held=model, saved=nn.ModuleDict({"model": model, "objective": objective}),
                      steps_per_epoch=steps, batch_shares=1, loss_rank=0)

    def backward(self, step_rows: torch.Tensor, batch_of: BatchOf) -> Iterator[StepTerms]:
        return accumulate(step_rows, batch_of, lambda batch: self.objective(self.model, batch), self.runtime,
                          self.micro_steps)

    def reads(self, step_rows: torch.Tensor) -> list[torch.Tensor]:
        return micro_batches(step_rows, self.runtime, self.micro_steps)

    def clip_gradients(self, clip: GradClipParams | None) -> None:
        clip_gradients(self.trained, clip)

    def epoch_means(self, sums: dict[str, torch.Tensor | float]) -> dict[str, float]:
        return summed_means(sums, self.runtime)

    def validate(self, model: nn.Module, split: ValidationSplit) -> dict[str, float]:
        return split.metrics(model)

    def state_dicts(self) -> tuple[StateDict, StateDict]:
        return full_state_dict(self.model), full_state_dict(self.objective)
