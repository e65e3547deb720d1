"""Where a stage runs: device, rank and world size, and which GPU speed paths apply, decided in this one place.

Under torchrun (WORLD_SIZE > 1) this joins the process group (NCCL on CUDA, gloo on the CPU) and
pins each process to its local GPU; a plain `python -m pipelines.<stage>` is rank 0 of 1. The `speed`
section's paths (bf16 autocast, TF32, cuDNN's autotuner, torch.compile, a fused optimizer, channels_last,
pinned memory, data on the device) apply on CUDA only: on the CPU every one of them is off.
"""

from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from pipelines.config.base import ParamsError
from pipelines.config.speed import SpeedParams
from pipelines.core.launch import LINE_PREFIX_VARIABLE, device_type
from pipelines.core.rendezvous import workers_store


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_world_size: int | None = None  # the processes on this node (torchrun's LOCAL_WORLD_SIZE); None: all
    speed: SpeedParams = SpeedParams(bf16=False, tf32=False, cudnn_benchmark=False, compile=False,
                                     optimizer_implementation="for_loop", channels_last=False, pin_memory=False,
                                     data_on_device=False, prefetch=False)  # what applies here: all off but on CUDA

    def autocast(self) -> AbstractContextManager[None]:
        """The forward passes' autocast: bfloat16 when `speed.bf16` applies, else nothing (not even a disabled
        autocast, which costs the step's host time)."""
        if not self.speed.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @property
    def is_main(self) -> bool:
        """Only the main process writes artifacts and logs metrics."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def nodes(self) -> int:
        """The nodes the processes run on (each with the same number of processes, as torchrun starts them)."""
        return self.world_size // (self.local_world_size or self.world_size)


def init_runtime(device: str = "auto", timeout_s: int = 300, speed: SpeedParams | None = None) -> Runtime:
    """The runtime of this process, from params' `device` and torchrun's environment. A collective that waits
    longer than `timeout_s` for another rank (one that died, say) fails instead of hanging. `speed` (params'
    section) applies on CUDA; bf16 only where the GPU supports it."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ParamsError("device: cuda, but no CUDA device is available (use auto or cpu)")
    use_cuda = device_type(device) == "cuda"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        excepthook = sys.excepthook
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=chosen if use_cuda else None,
                                timeout=timeout, rank=rank, world_size=world_size,
                                store=workers_store(rank, world_size, timeout))
        if os.environ.get(LINE_PREFIX_VARIABLE):  # torchrun prefixes each line with the rank already: torch's
            sys.excepthook = excepthook           # hook would prefix a traceback's lines a second time
    if use_cuda and speed is not None:
        bf16 = speed.bf16 and torch.cuda.is_bf16_supported()
        torch.backends.cudnn.benchmark = speed.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = speed.tf32
        return Runtime(chosen, rank, world_size, local_world_size, speed.model_copy(update={"bf16": bf16}))
    return Runtime(device=chosen, rank=rank, world_size=world_size, local_world_size=local_world_size)


def shutdown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()
