"""How a model and its objective train on several processes, kept apart from the model code and from the
loop (as torchtitan keeps `parallelize` beside its models): the loop asks for the module whose forward runs
the objective, and gets DDP over the model and the objective together (so an objective's own parameters,
an adapter, are averaged too), with SyncBatchNorm when params ask for it."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipelines.config.base import ParamsError
from pipelines.config.distributed import DistributedParams
from pipelines.engine.objective import Batch, Objective
from pipelines.engine.runtime import Runtime


class Trainee(nn.Module):
    """The model and its objective as one module: forward(batch) runs the objective, and so the model."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective(self.model, batch)


def parallelize(
    model: nn.Module, objective: Objective, runtime: Runtime, params: DistributedParams
) -> DistributedDataParallel | None:
    """DDP over `model` and `objective` under torchrun (its batch norms made SyncBatchNorm in place when
    `sync_batchnorm`: the state dict keeps its keys); None in a single process, which needs no wrapper."""
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
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(Trainee(model, objective), device_ids=device_ids)
