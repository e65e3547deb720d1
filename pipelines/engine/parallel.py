"""How a model and its objective train on this runtime's processes, kept apart from the model code and from
the loop (as torchtitan keeps `parallelize` beside its models). `parallelize` returns the object the loop asks
for each optimizer step's gradient, the epoch's loss means and the validation metrics; `distributed.strategy`
picks it:

    ddp       each process takes its share of every global batch; DistributedDataParallel over the model and
              the objective together (so an objective's own parameters, an adapter, are averaged too);
              SyncBatchNorm when `sync_batchnorm`. One process is this without a wrapper
              (`DataParallel`, pipelines/engine/data_parallel.py).
    fsdp      the same split of the batch, with FSDP2 (`fully_shard`): each block of the model sharded across
              the processes, then the model (and the objective, when it has parameters); with bf16, under
              FSDP2's mixed-precision policy (weights gathered in bf16, gradients reduced in fp32). With
              `fsdp_replicas` N > 1, HSDP: a 2-D device mesh of N replicas, each sharded over its processes
    pipeline  the model's layers split across the processes, every batch flowing through them in
              micro-batches (pipelines/engine/pipeline.py); on one process, one stage of every layer

The checkpoint is always the plain model's full state dict, which one process loads. What reads the weights
besides the optimizer (the EMA, early stopping's best epoch, the L1 penalty's gradient) works on `held`, the
part of the model this process holds: the whole model, its shards, or its stage's layers. A live teacher
(pipelines/kd/teacher.py) runs under the student's strategy: sharded per block under fsdp, whole on every
process under ddp.
"""

from __future__ import annotations

import logging
from typing import cast

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from pipelines.config.distributed import DistributedParams
from pipelines.engine.data_parallel import DataParallel, Trainee
from pipelines.engine.objective import Objective
from pipelines.engine.pipeline import OneStage, PipelineParallel
from pipelines.engine.runtime import Runtime
from pipelines.engine.tensors import local

log = logging.getLogger(__name__)


def parallelize(
    model: nn.Module,
    objective: Objective,
    runtime: Runtime,
    params: DistributedParams,
) -> DataParallel:
    """How `model` trains under `objective` on this runtime's processes (see the module's doc). `model` stays
    the module the caller holds."""
    params.check_processes(runtime.world_size, runtime.nodes, runtime.device.type)
    compiled = runtime.speed.compile  # torch.compile: the model here, each block under FSDP, a stage's layers
    if not runtime.distributed or params.strategy == "ddp":
        if compiled:
            model.compile()
    if params.strategy == "pipeline":
        return (PipelineParallel if runtime.distributed else OneStage)(model, objective, runtime, params)
    if not runtime.distributed:
        return DataParallel(model, objective, runtime, params)
    if params.sync_batchnorm:
        for name, child in list(model.named_children()):  # in place, so `model` stays the module the caller holds
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    if params.strategy == "ddp":
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        wrapped = DistributedDataParallel(Trainee(model, objective), device_ids=device_ids)
        return DataParallel(model, objective, runtime, params, wrapped)
    mesh = fsdp_mesh(runtime, params)
    for block in blocks(model):
        if compiled:
            block.compile()
        shard(block, runtime, mesh)
    shard(model, runtime, mesh)
    if any(True for _ in objective.parameters()):
        shard(objective, runtime, mesh)
    for frozen in objective.inference_models():  # a live teacher: each process holds its shards only
        shard_for_inference(frozen, runtime, mesh)
    return DataParallel(model, objective, runtime, params, Trainee(model, objective))


def fsdp_mesh(runtime: Runtime, params: DistributedParams) -> DeviceMesh:
    """The processes as FSDP2 lays the model over them: one dimension, the shards of one copy; with
    `fsdp_replicas` N > 1 (HSDP), N rows of consecutive ranks (a node's processes, for `nodes`), each row
    sharding one copy, the copies' gradients averaged down each column."""
    replicas = runtime.nodes if params.fsdp_replicas == "nodes" else params.fsdp_replicas  # a divisor (checked)
    if replicas == 1:
        return init_device_mesh(runtime.device.type, (runtime.world_size,), mesh_dim_names=("shard",))
    if runtime.is_main:
        log.info("HSDP: %d copies of the model, each sharded across %d processes", replicas,
                 runtime.world_size // replicas)
    return init_device_mesh(runtime.device.type, (replicas, runtime.world_size // replicas),
                            mesh_dim_names=("replicate", "shard"))


def shard_for_inference(model: nn.Module, runtime: Runtime, mesh: DeviceMesh) -> None:
    """FSDP2 over a model that only runs forwards (a live teacher): its blocks and then the rest sharded,
    each gathered for its forward and freed after it (the root too, which training keeps gathered)."""
    name = type(model).__name__  # before fully_shard renames the class (FSDP<name>)
    for block in blocks(model):
        shard(block, runtime, mesh)
    shard(model, runtime, mesh, reshard_after_forward=True)
    if runtime.is_main:
        held = sum(local(parameter).numel() for parameter in model.parameters())
        total = sum(parameter.numel() for parameter in model.parameters())
        log.info("the live %s is sharded across %d processes: this one holds %d of its %d parameters",
                 name, mesh.size(-1), held, total)


def shard(module: nn.Module, runtime: Runtime, mesh: DeviceMesh, reshard_after_forward: bool | None = None) -> None:
    """FSDP2's `fully_shard` of `module`. With bf16 (`speed.bf16` where it applies) under FSDP2's
    `MixedPrecisionPolicy`: each block's weights are all-gathered in bf16 (half the bytes, and no cast per op),
    gradients reduced in fp32 into the fp32 shards that the optimizer steps; autocast still picks each op's
    precision (the loss in fp32). Batch norm layers are sharded on their own first, their weights kept fp32:
    torch's batch norm takes bf16 inputs with fp32 weights, not bf16 weights beside fp32 running statistics."""
    policy = MixedPrecisionPolicy()
    norms = [norm for norm in module.modules()
             if isinstance(norm, nn.modules.batchnorm._BatchNorm) and not isinstance(norm, FSDPModule)]
    if runtime.speed.bf16 and module not in norms:
        for norm in norms:
            fully_shard(norm, mesh=mesh, mp_policy=policy)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if reshard_after_forward is None:
        fully_shard(module, mesh=mesh, mp_policy=policy)
    else:
        fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The units FSDP shards one by one: the layers (or residual blocks) of the model's feature extractor,
    or, for a model without one, its top-level layers; those without parameters are left out."""
    features = getattr(model, "features", None)
    layers = features if isinstance(features, nn.Sequential) else model
    return [layer for layer in layers.children() if any(True for _ in layer.parameters())]


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict on the CPU. Under FSDP it is gathered from every process's shards: every
    rank must call this, and the main one gets the tensors (the others an empty dict)."""
    if isinstance(model, FSDPModule):
        # A full state dict holds plain tensors (torch types the values as any kind of state).
        return cast(dict[str, torch.Tensor],
                    get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))
    return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
