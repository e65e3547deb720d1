"""`distributed.strategy: fsdp`: each process takes its share of every global batch, as under ddp, with FSDP2
(`fully_shard`): each block of the model sharded across the processes, then the model (and the objective, when
it has parameters); with bf16, under FSDP2's mixed-precision policy (weights gathered in bf16, gradients
reduced in fp32). With `fsdp_replicas` N > 1, HSDP: a 2-D device mesh of N replicas, each sharded over its
processes. A live teacher is sharded per block too, each process holding its shards only. The model stays in
host memory until `fully_shard` moves each block to the device as it shards it: a model larger than one device
is never whole on one."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from pipelines.config.distributed import DistributedParams
from pipelines.config.training import GradClipParams
from pipelines.data.images import ImageSet
from pipelines.engine.batch_sharing import share_batches
from pipelines.engine.capture import live_models_of
from pipelines.engine.inference import ValidationSplit
from pipelines.engine.objective import Objective
from pipelines.engine.optim import clip_gradients
from pipelines.engine.runtime import Runtime
from pipelines.engine.schedules import steps_per_epoch
from pipelines.engine.strategies.base import (BatchOf, Layout, StateDict, StepTerms, compile_module, full_state_dict,
                                               place, trained_parameters)
from pipelines.engine.strategies.shares import Trainee, accumulate, micro_batches, summed_means, validate_shares
from pipelines.engine.tensors import local

log = logging.getLogger(__name__)


class FSDP:
    """The model's blocks sharded across the processes (see the module's doc)."""

    def __init__(self, runtime: Runtime, params: DistributedParams) -> None:
        self.runtime, self.params = runtime, params

    def prepare(self, model: nn.Module, objective: Objective, train_set: ImageSet, batch_size: int) -> Layout:
        place(model, objective, train_set, self.runtime, on_device=False)
        share_batches(objective, dist.group.WORLD)  # each process computes the loss of its share of every batch
        mesh = fsdp_mesh(self.runtime, self.params)
        for block in blocks(model):
            compile_module(block, self.runtime)
            shard(block, self.runtime, mesh)
        shard(model, self.runtime, mesh)
        if any(True for _ in objective.parameters()):
            shard(objective, self.runtime, mesh)
        for frozen in live_models_of(objective):  # a live teacher: each process holds its shards only
            shard_for_inference(frozen.module, self.runtime, mesh)
        self.model, self.objective = model, objective
        self.trainee = Trainee(model, objective)
        self.trained = trained_parameters(model, objective)
        return Layout(trained=self.trained, held=model, saved=nn.ModuleDict({"model": model, "objective": objective}),
                      steps_per_epoch=steps_per_epoch(len(train_set), batch_size, self.runtime.world_size,
                                                      self.runtime.speed.compile),
                      batch_shares=self.runtime.world_size, loss_rank=0)

    def backward(self, step_rows: torch.Tensor, batch_of: BatchOf) -> Iterator[StepTerms]:
        return accumulate(step_rows, batch_of, self.trainee, self.runtime, self.params.grad_accum_steps,
                          self.trainee.no_sync)

    def reads(self, step_rows: torch.Tensor) -> list[torch.Tensor]:
        return micro_batches(step_rows, self.runtime, self.params.grad_accum_steps)

    def clip_gradients(self, clip: GradClipParams | None) -> None:
        clip_gradients(self.trained, clip)

    def epoch_means(self, sums: dict[str, torch.Tensor | float]) -> dict[str, float]:
        return summed_means(sums, self.runtime)

    def validate(self, model: nn.Module, split: ValidationSplit) -> dict[str, float]:
        return validate_shares(model, split, self.runtime)

    def state_dicts(self) -> tuple[StateDict, StateDict]:
        """Gathered from every process's shards (a collective); the main process gets the tensors."""
        return full_state_dict(self.model), full_state_dict(self.objective)


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
