"""The interface between the training loop and the processes it runs on: `Strategy`, which every strategy
module implements (pipelines/engine/strategies/: one process, ddp, fsdp, pipeline parallelism), and `Layout`,
what a strategy's preparation tells the loop. The loop calls nothing else of a strategy."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, cast

import torch
from torch import nn

from pipelines.config.training import GradClipParams
from pipelines.data.images import ImageSet
from pipelines.engine.capture import live_models_of
from pipelines.engine.inference import ValidationSplit
from pipelines.engine.objective import BatchOf, Objective
from pipelines.engine.rows import row_tables_of
from pipelines.engine.runtime import Runtime
from pipelines.engine.tensors import is_sharded

StepTerms = tuple[int, torch.Tensor, dict[str, torch.Tensor]]  # images, loss and loss terms of one micro-batch
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Layout:
    """How the model lies on this process once a strategy has prepared it."""

    trained: list[nn.Parameter]  # what this process's optimizer steps (each parameter once)
    held: nn.Module  # the model's weights as this process holds them: the EMA, early stopping, L1 and the
    # divergence check read these (the whole model, its FSDP shards, a pipeline stage's layers)
    saved: nn.Module  # what a resumable save holds of the model and the objective, under the whole model's names
    steps_per_epoch: int  # optimizer steps in one epoch
    batch_shares: int  # the processes that share out each batch's rows (distributed.lr_scaling counts them)
    loss_rank: int  # the rank whose loss sums `epoch_means` reads (the one that sees them all, under a pipeline)


class Strategy(Protocol):
    """How a model and its objective train on this runtime's processes."""

    def prepare(self, model: nn.Module, objective: Objective, train_set: ImageSet, batch_size: int) -> Layout:
        """Place `model` (and the objective, and a live teacher) on the processes, set the objective up, wrap or
        shard them, or cut them into a pipeline's stages and build its schedule, for global batches of
        `batch_size` rows of `train_set`. `model` stays the module the caller holds."""
        ...

    def backward(self, step_rows: torch.Tensor, batch_of: BatchOf) -> Iterator[StepTerms]:
        """Accumulate the gradient of one optimizer step over the global batch `step_rows` into `.grad`;
        yield each micro-batch's size, loss and terms that this process sees."""
        ...

    def reads(self, step_rows: torch.Tensor) -> list[torch.Tensor]:
        """The rows `backward` of the global batch `step_rows` asks its `batch_of` for on this process, in that
        order (what a batch source may gather ahead, in the background)."""
        ...

    def clip_gradients(self, clip: GradClipParams | None) -> None:
        """Clip the step's gradients as `regularization.grad_clip` says (the norm is that of all of them)."""
        ...

    def epoch_means(self, sums: dict[str, torch.Tensor | float]) -> dict[str, float]:
        """The epoch's mean of each loss term over every process's images (`sums` ends with their count)."""
        ...

    def validate(self, model: nn.Module, split: ValidationSplit) -> dict[str, float]:
        """Validation loss and accuracy on the whole split, the same on every rank."""
        ...

    def state_dicts(self) -> tuple[StateDict, StateDict]:
        """The whole state dicts of the model and of the objective, on the CPU of the main process (empty on
        the others): a collective, every rank calls it once training is over."""
        ...


def place(model: nn.Module, objective: Objective, train_set: ImageSet, runtime: Runtime, on_device: bool) -> None:
    """What every strategy's preparation starts with: the model on the device (unless `on_device` is False: a
    strategy that moves it part by part, so that a model larger than one device is never whole on one), in
    channels_last where that applies, then the objective set up for it and moved beside it, a live teacher in
    channels_last too, and the tables it reads by rows kept on the device where they fit."""
    if on_device:
        model.to(runtime.device)
    if runtime.speed.channels_last:
        # nn.Module.to takes memory_format (torch's overloads of it leave the keyword out)
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    objective.setup(model, train_set)
    objective.to(runtime.device)
    for table in row_tables_of(objective):  # the teacher's stored outputs, on the device when they fit
        table.keep_on(runtime)
    if runtime.speed.channels_last:
        for live in live_models_of(objective):
            live.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def compile_whole(model: nn.Module, objective: Objective, runtime: Runtime) -> None:
    """`speed.compile` where each process holds whole models: the model (for validation), the objective, which
    runs the model, and so compiles the forward and the loss into one graph, and a live teacher beside them."""
    for module in (model, objective, *(live.module for live in live_models_of(objective))):
        compile_module(module, runtime)


def compile_module(module: nn.Module, runtime: Runtime) -> None:
    """torch.compile `module` in place as `speed.compile` and `speed.compile_mode` say, with static shapes: the
    training steps are of one shape (an epoch's last, partial batch is left out: `steps_per_epoch`), and so
    are validation's forwards (pipelines/engine/inference.py), so nothing recompiles after the first of each."""
    if runtime.speed.compile:
        module.compile(mode=runtime.speed.compile_mode, dynamic=False)


def trained_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """The parameters of `modules`, each once (an objective may keep a reference to the model, and so list its
    parameters too)."""
    return list({id(parameter): parameter for module in modules for parameter in module.parameters()}.values())


def full_state_dict(module: nn.Module) -> StateDict:
    """The module's whole state dict on the CPU. Under FSDP it is gathered from every process's shards: every
    rank must call this, and the main one gets the tensors (the others an empty dict)."""
    if not is_sharded(module):
        return {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # A full state dict holds plain tensors (torch types the values as any kind of state).
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return cast(StateDict, get_model_state_dict(cast(nn.Module, module), options=options))
