"""`timm:<model-name>`: any timm model, randomly initialized (timm is an optional package)."""

from __future__ import annotations

import torch

from pipelines.models.base import NormalizedInput
from pipelines.models.config import ModelConfig


class TimmModel(NormalizedInput):
    """`timm.create_model(name)` (randomly initialized) sized for the data's channels and classes, behind
    the same input normalization as the other architectures; width and depth do not apply."""

    def __init__(self, config: ModelConfig) -> None:
        import timm  # optional: model.arch validation already checked that it is installed

        super().__init__(config)
        self.network = timm.create_model(
            config.arch.removeprefix("timm:"), pretrained=False,
            num_classes=config.num_classes, in_chans=config.in_channels, drop_rate=config.dropout,
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalize(pixels))
