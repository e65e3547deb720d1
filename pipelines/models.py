"""Model factory: a plain CNN sized by width, depth and dropout, built from a checkpointable config.

The config is a dict of plain values (saved inside each checkpoint), so a model is rebuilt from its
file alone: `build_model(checkpoint["model_config"])`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipelines.config import ModelParams


def model_config(params: ModelParams, card: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to rebuild the model: its params plus the data's shape, classes and statistics."""
    channels, height, width = card["image_shape"]
    return {
        "arch": "cnn",
        "width": params.width,
        "depth": params.depth,
        "dropout": params.dropout,
        "in_channels": channels,
        "image_size": [height, width],
        "num_classes": card["num_classes"],
        "pixel_mean": card["pixel_mean"],
        "pixel_std": card["pixel_std"],
    }


class ConvNet(nn.Module):
    """`depth` blocks of two 3x3 conv-BN-ReLU layers, 2x2 max-pooling between blocks, then a linear classifier.

    Input is pixels scaled to [0, 1]; the model normalizes them itself with the training-set statistics,
    so an exported model needs no separate preprocessing.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(config["pixel_mean"]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(config["pixel_std"]).clamp_min(1e-6).view(1, -1, 1, 1))
        layers: list[nn.Module] = []
        channels, size = config["in_channels"], min(config["image_size"])
        for block in range(config["depth"]):
            out_channels = config["width"] * 2**block
            for _ in range(2):
                layers += [
                    nn.Conv2d(channels, out_channels, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                ]
                channels = out_channels
            # Pool between blocks while there is room; the global pool below handles the rest.
            if block < config["depth"] - 1 and size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config["dropout"])
        self.classifier = nn.Linear(channels, config["num_classes"])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels - self.mean) / self.std
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def build_model(config: dict[str, Any]) -> nn.Module:
    if config["arch"] == "cnn":
        return ConvNet(config)
    raise ValueError(f"unknown model arch {config['arch']!r}; valid: cnn")


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
