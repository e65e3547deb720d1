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
from pipelines.engine.strategies.single import OneProcess


# Each strategy's module is imported only when it is chosen: each pulls in its part of torch.distributed, which
# one process training alone never needs (pipelining alone was 0.3 s of the start of a one-process stage).
def _ddp() -> type:
    from pipelines.engine.strategies.ddp import DDP
    return DDP


def _fsdp() -> type:
    from pipelines.engine.strategies.fsdp import FSDP
    return FSDP


def _pipeline() -> type:
    from pipelines.engine.strategies.pipeline import PipelineParallel
    return PipelineParallel


STRATEGIES: dict[str, Callable[[], type]] = {  # name: its class, imported
    "ddp": _ddp,  # the model on every process, gradients averaged
    "fsdp": _fsdp,  # the model's blocks sharded across the processes (HSDP with fsdp_replicas)
    "pipeline": _pipeline,  # the model's layers split across the processes, batches flowing through them
}

__all__ = ["Layout", "STRATEGIES", "Strategy", "build_strategy", "strategy_class"]


def strategy_class(name: str) -> type:
    """The class implementing strategy `name` of STRATEGIES, its module imported."""
    return STRATEGIES[name]()


def build_strategy(runtime: Runtime, params: DistributedParams) -> Strategy:
    """The strategy `params` name for this runtime's processes; ParamsError for what they cannot run."""
    params.check_processes(runtime.world_size, runtime.nodes, runtime.device.type)
    if not runtime.distributed:
        return OneProcess(runtime, params)
    strategy: Strategy = strategy_class(params.strategy)(runtime, params)
    return strategy
