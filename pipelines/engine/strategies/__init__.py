"""How a model and its objective train on this runtime's processes, kept apart from the model code and from
the loop (as torchtitan keeps `parallelize` beside its models). `distributed.strategy` picks one of STRATEGIES,
each a module implementing the `Strategy` interface (pipelines/engine/strategies/base.py); one process runs
`OneProcess` whatever the strategy says.

The final model file is always the plain model's whole state dict, which one process loads. What reads the
weights besides the optimizer (the EMA, early stopping's best epoch, the L1 penalty's gradient, the divergence
check) works on the `Layout`'s `held`: the part of the model this process holds (the whole model, its shards,
or its stage's layers).
"""

from __future__ import annotations

from collections.abc import Callable

from pipelines.config.distributed import DistributedParams
from pipelines.engine.runtime import Runtime
from pipelines.engine.strategies.base import Layout, Strategy
from pipelines.engine.strategies.ddp import DDP
from pipelines.engine.strategies.fsdp import FSDP
from pipelines.engine.strategies.pipeline import PipelineParallel
from pipelines.engine.strategies.single import OneProcess

STRATEGIES: dict[str, Callable[[Runtime, DistributedParams], Strategy]] = {
    "ddp": DDP,  # the model on every process, gradients averaged
    "fsdp": FSDP,  # the model's blocks sharded across the processes (HSDP with fsdp_replicas)
    "pipeline": PipelineParallel,  # the model's layers split across the processes, batches flowing through them
}

__all__ = ["Layout", "STRATEGIES", "Strategy", "build_strategy"]


def build_strategy(runtime: Runtime, params: DistributedParams) -> Strategy:
    """The strategy `params` name for this runtime's processes; ParamsError for what they cannot run."""
    params.check_processes(runtime.world_size, runtime.nodes, runtime.device.type)
    if not runtime.distributed:
        return OneProcess(runtime, params)
    return STRATEGIES[params.strategy](runtime, params)
