"""What the engine does to a tensor or module whatever the strategy made of it: a plain one, or FSDP2's DTensor
and sharded module. Neither type is imported here (torch.distributed.tensor, .fsdp): a tensor or module of
theirs can exist only once the strategy that makes them has imported them, and the engine's modules leave
those imports to the strategies that need them."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TypeGuard

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor (an FSDP shard's local tensor), for in-place updates."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return tensor.to_local() if dtensor is not None and isinstance(tensor, dtensor.DTensor) else tensor


def is_sharded(module: nn.Module) -> TypeGuard[FSDPModule]:
    """Whether FSDP2 has sharded `module` (fully_shard)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(module, fsdp.FSDPModule)
