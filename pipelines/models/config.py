"""ModelConfig: everything needed to rebuild a model, saved inside each checkpoint as plain values (so a
checkpoint loads with `torch.load(weights_only=True)`). `from_dict` reads what `to_dict` wrote, including
the checkpoints written before this type existed (the same keys) or before the mlp's `init` and `norm`
(their defaults). `to_dict` writes `init` and `norm` only where they are not the defaults, so that every
other model's checkpoint keeps the layout it always had."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipelines.config.training import Initialization, Normalization

MLP_OPTIONS: dict[str, str] = {"init": "default", "norm": "none"}  # the mlp's own keys and their defaults


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # a form of pipelines.config.training.ARCHITECTURES
    width: int
    depth: int
    blocks_per_stage: int
    dropout: float
    in_channels: int
    image_size: tuple[int, int]  # (height, width)
    num_classes: int
    pixel_mean: tuple[float, ...]  # per channel, on the [0, 1] scale: the model normalizes its own input
    pixel_std: tuple[float, ...]
    init: Initialization = "default"  # mlp only (MLP_OPTIONS): how its hidden layers start
    norm: Normalization = "none"  # mlp only (MLP_OPTIONS): what follows each hidden layer before its ReLU

    def to_dict(self) -> dict[str, Any]:
        values = {key: value for key, value in asdict(self).items() if (key, value) not in MLP_OPTIONS.items()}
        return values | {key: list(values[key]) for key in ("image_size", "pixel_mean", "pixel_std")}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        converted = {key: tuple(values[key]) for key in ("image_size", "pixel_mean", "pixel_std")}
        return cls(**(values | converted))
