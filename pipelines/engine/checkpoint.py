"""Model checkpoints: state dict, model config and final metrics in one file, written atomically.

Everything in the file is tensors or plain values, so it loads with `torch.load(weights_only=True)`:
reading a checkpoint never runs pickled code. Checkpoint is its typed form; checkpoints written before it
existed have the same layout and load unchanged.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipelines.core.atomic import atomic_path
from pipelines.core.errors import CheckpointError
from pipelines.models import ModelConfig, build_model


@dataclass(frozen=True)
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    model_config: ModelConfig
    metrics: dict[str, float]  # the training run's final metrics (validation loss and accuracy, epochs, ...)


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], config: ModelConfig, metrics: dict[str, float]) -> None:
    """Write a model's whole state dict (a strategy's `state_dicts`), config and metrics."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "model_config": config.to_dict(), "metrics": metrics}, tmp)


def load_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint in `path`; CheckpointError naming the file when it is missing, cut short or not one of
    this pipeline's (torch.load alone says `[Errno 22] Invalid argument` of a truncated file, naming none)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; run the stage that writes it (dvc repro) "
                              f"or `dvc pull {path}`")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return Checkpoint(stored["state_dict"], ModelConfig.from_dict(stored["model_config"]), stored["metrics"])
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError) as error:
        detail = str(error) if isinstance(error, (OSError, KeyError)) else type(error).__name__  # no pickle advice
        raise CheckpointError(
            f"{path}: not a readable checkpoint of this pipeline ({detail}): it was cut short or damaged. Get the "
            f"last good one back with `dvc checkout --force {path}`, or rerun the stage that writes it"
        ) from None


def load_model(path: Path) -> tuple[nn.Module, Checkpoint]:
    """The model in eval mode on the CPU, and its checkpoint (config and metrics)."""
    checkpoint = load_checkpoint(path)
    model = build_model(checkpoint.model_config)
    model.load_state_dict(checkpoint.state_dict)
    return model.eval(), checkpoint
