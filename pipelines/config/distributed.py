"""The `distributed` section: how the training stages run, in one process or in several under torchrun
(the GPUs of one node, or several nodes). The same params give the same artifacts either way; what is
per process and what is global is in docs/distributed.md."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from pipelines.config.base import ParamsError, Section


class DistributedParams(Section):
    nproc_per_node: Literal["auto"] | int = "auto"  # processes per node; auto: one per visible GPU, 1 without
    # none: one process whatever nproc_per_node says; ddp: data parallel; fsdp: FSDP2, parameters sharded per
    # block; pipeline: the model's layers split across the processes, batches flowing through in micro-batches
    strategy: Literal["none", "ddp", "fsdp", "pipeline"] = "ddp"
    # nodes taking part: each runs the same command (docs/distributed.md)
    nnodes: int = Field(default=1, ge=1)
    # host:port every node reaches (the c10d rendezvous); one node: any free port
    rdzv_endpoint: str = "127.0.0.1:29400"
    rdzv_id: str = "distill-pipeline"  # the run's rendezvous id: the same on every node of one run
    sync_batchnorm: bool = False  # batch norm statistics over the global batch rather than each process's share
    # micro-batches per optimizer step; the batch size stays the global batch
    grad_accum_steps: int = Field(default=1, ge=1)
    # fsdp: the whole copies of the model the processes hold. 1: one copy, sharded over every process (FSDP);
    # N: HSDP, N groups of processes each sharding a copy, gradients averaged between the groups; nodes: one
    # copy per node, so that the per-block all-gathers stay inside each node and only gradients cross nodes.
    fsdp_replicas: Literal["nodes"] | int = 1
    # The learning rate times the number of processes (linear) or its square root (sqrt): for when
    # train.batch_size is set to grow with them (a per-process batch times N); none: as the optimizer says.
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    # pipeline: micro-batches per global batch (it must divide train.batch_size)
    microbatches: int = Field(default=4, ge=1)
    pipeline_schedule: Literal["gpipe", "1f1b"] = "gpipe"  # pipeline: all forwards then all backwards, or interleaved
    max_restarts: int = Field(default=0, ge=0)  # torchrun restarts of the workers after a failure
    timeout_s: int = Field(default=300, ge=1)  # longest wait for the rendezvous or a collective before the stage fails

    @field_validator("nproc_per_node")
    @classmethod
    def _positive(cls, value: str | int) -> str | int:
        return _auto_or_positive(value)

    @field_validator("fsdp_replicas")
    @classmethod
    def _replicas(cls, value: str | int) -> str | int:
        return _nodes_or_positive(value)

    def with_changes(self, changes: ModelDistributedParams | None) -> DistributedParams:
        """These settings with one model's changes (its section's `distributed`) applied."""
        given = {} if changes is None else {key: value for key, value in changes.model_dump().items()
                                            if value is not None}
        return self.model_copy(update=given)

    def check_processes(self, processes: int, nodes: int, device_type: str) -> None:
        """What these settings cannot run on `processes` processes over `nodes` nodes of `device_type` (cuda,
        cpu), named: the launcher asks before it starts any worker, the workers again (for a torchrun typed by
        hand)."""
        if self.strategy == "none" and processes > 1:
            raise ParamsError(f"distributed.strategy none runs one process, yet {processes} were started (a torchrun "
                              f"typed by hand?); set strategy ddp, fsdp or pipeline, or run the stage without torchrun")
        if self.sync_batchnorm and processes > 1 and device_type != "cuda":
            raise ParamsError(f"distributed.sync_batchnorm: torch's SyncBatchNorm runs on GPUs only, and these "
                              f"processes run on {device_type}; set it to false (each process then normalizes over "
                              f"its share of the batch)")
        replicas = nodes if self.fsdp_replicas == "nodes" else self.fsdp_replicas
        if self.strategy == "fsdp" and processes > 1 and processes % replicas:
            raise ParamsError(f"distributed.fsdp_replicas: {replicas} copies of the model cannot be spread evenly "
                              f"over {processes} processes; pick a divisor of {processes}, or nodes")
        if self.strategy == "pipeline" and self.grad_accum_steps > 1:
            raise ParamsError("distributed.grad_accum_steps: under strategy pipeline every batch is already split "
                              "into distributed.microbatches; set grad_accum_steps to 1")
        if self.strategy == "pipeline" and self.pipeline_schedule == "1f1b" and self.microbatches < processes:
            raise ParamsError(f"distributed.microbatches: 1f1b needs at least one micro-batch per stage "
                              f"({processes} processes), got {self.microbatches}")

    @field_validator("rdzv_endpoint")
    @classmethod
    def _host_port(cls, endpoint: str) -> str:
        if not re.fullmatch(r"[\w.\-\[\]:]+:\d{1,5}", endpoint):
            raise ValueError(f"rdzv_endpoint must be host:port, got {endpoint!r}")
        return endpoint


class ModelDistributedParams(Section):
    """One model's changes to the `distributed` section (`teacher.distributed`, `student.distributed`, or a
    distilled student's): a big teacher sharded, a small student data parallel. Unset keys keep the section's."""

    strategy: Literal["none", "ddp", "fsdp", "pipeline"] | None = None
    nproc_per_node: Literal["auto"] | int | None = None
    sync_batchnorm: bool | None = None
    grad_accum_steps: int | None = Field(default=None, ge=1)
    fsdp_replicas: Literal["nodes"] | int | None = None
    lr_scaling: Literal["none", "linear", "sqrt"] | None = None
    microbatches: int | None = Field(default=None, ge=1)
    pipeline_schedule: Literal["gpipe", "1f1b"] | None = None

    @field_validator("nproc_per_node")
    @classmethod
    def _positive(cls, value: str | int | None) -> str | int | None:
        return value if value is None else _auto_or_positive(value)

    @field_validator("fsdp_replicas")
    @classmethod
    def _replicas(cls, value: str | int | None) -> str | int | None:
        return value if value is None else _nodes_or_positive(value)


def _auto_or_positive(value: str | int) -> str | int:
    if isinstance(value, int) and value < 1:
        raise ValueError(f"nproc_per_node must be auto or at least 1, got {value}")
    return value


def _nodes_or_positive(value: str | int) -> str | int:
    if isinstance(value, int) and value < 1:
        raise ValueError(f"fsdp_replicas must be nodes or at least 1, got {value}")
    return value
