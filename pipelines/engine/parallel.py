"""How a model and its objective train on several processes, kept apart from the model code and from the
loop (as torchtitan keeps `parallelize` beside its models). The loop asks for the module whose forward runs
the objective and that has a `no_sync()` for micro-batches; `distributed.strategy` picks how it is built:

    ddp    DistributedDataParallel over the model and the objective together (so an objective's own
           parameters, an adapter, are averaged too); SyncBatchNorm when `sync_batchnorm`
    fsdp   FSDP2 (`fully_shard`): each block of the model sharded across the processes, then the model
           (and the objective, when it has parameters); `full_state_dict` gathers the whole model to save it

The checkpoint is always the plain model's full state dict, which one process loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from pipelines.config.base import ParamsError
from pipelines.config.distributed import DistributedParams
from pipelines.config.training import RegularizationParams
from pipelines.engine.objective import Batch, Objective
from pipelines.engine.runtime import Runtime


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


def parallelize(
    model: nn.Module,
    objective: Objective,
    runtime: Runtime,
    params: DistributedParams,
    regularization: RegularizationParams,
) -> nn.Module | None:
    """The module that trains `model` under `objective` on this runtime's processes (see the module's doc);
    None in a single process, which needs no wrapper. `model` stays the module the caller holds."""
    if not runtime.distributed:
        return None
    if params.sync_batchnorm and runtime.device.type != "cuda":
        raise ParamsError(
            f"distributed.sync_batchnorm: torch's SyncBatchNorm runs on GPUs only, and these processes run on "
            f"{runtime.device.type}; set it to false (each process then normalizes over its share of the batch)"
        )
    if params.sync_batchnorm:
        for name, child in list(model.named_children()):  # in place, so `model` stays the module the caller holds
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    if params.strategy == "ddp":
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        return DistributedDataParallel(Trainee(model, objective), device_ids=device_ids)
    unsupported = [key for key, on in (("ema_decay", regularization.ema_decay is not None),
                                       ("early_stopping", regularization.early_stopping is not None),
                                       ("l1", regularization.l1 > 0)) if on]
    if unsupported:
        raise ParamsError(f"distributed.strategy fsdp does not support regularization.{', '.join(unsupported)} "
                          f"yet (they read whole weights): use strategy ddp, or turn them off")
    for block in blocks(model):
        fully_shard(block)
    fully_shard(model)
    if any(True for _ in objective.parameters()):
        fully_shard(objective)
    return Trainee(model, objective)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The units FSDP shards one by one: the layers (or residual blocks) of the model's feature extractor,
    or, for a model without one, its top-level layers; those without parameters are left out."""
    layers = model.features if isinstance(getattr(model, "features", None), nn.Sequential) else model
    return [layer for layer in layers.children() if any(True for _ in layer.parameters())]


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict on the CPU. Under FSDP it is gathered from every process's shards: every
    rank must call this, and the main one gets the tensors (the others an empty dict)."""
    if isinstance(model, FSDPModule):
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
