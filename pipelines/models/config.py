"""ModelConfig: everything needed to rebuild a model, saved inside each checkpoint as plain values (so a
checkpoint loads with `torch.load(weights_only=True)`). `from_dict` reads what `to_dict` wrote, including
the checkpoints written before this type existed (the same keys)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        return values | {key: list(values[key]) for key in ("image_size", "pixel_mean", "pixel_std")}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        converted = {key: tuple(values[key]) for key in ("image_size", "pixel_mean", "pixel_std")}
        return cls(**(values | converted))
