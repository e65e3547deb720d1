"""What the engine does to a tensor whatever the strategy made of it: a plain tensor, or FSDP2's DTensor."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor (an FSDP shard's local tensor), for in-place updates."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
