"""Model checkpoints: state dict, model config and final metrics in one file, written atomically.

Everything in the file is tensors or plain values, so it loads with `torch.load(weights_only=True)`:
reading a checkpoint never runs pickled code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipelines.atomic import atomic_path
from pipelines.models import build_model


def save_checkpoint(path: Path, model: nn.Module, config: dict[str, Any], metrics: dict[str, float]) -> None:
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "model_config": config, "metrics": metrics}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model in eval mode on the CPU, and its checkpoint (config and metrics)."""
    checkpoint = load_checkpoint(path)
    model = build_model(checkpoint["model_config"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint
