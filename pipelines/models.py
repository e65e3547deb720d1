"""Model factory: a plain CNN or a small ResNet, sized by width, depth and dropout, or any timm model,
built from a checkpointable config.

The config is a dict of plain values (saved inside each checkpoint), so a model is rebuilt from its
file alone: `build_model(checkpoint["model_config"])`. Channels, image size and classes come from the
dataset card, so the same params fit 8x8 grayscale digits and 32x32 RGB images alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipelines.config import ARCHS, ModelParams


def model_config(params: ModelParams, card: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to rebuild the model: its params plus the data's shape, classes and statistics."""
    channels, height, width = card["image_shape"]
    return {
        "arch": params.arch,
        "width": params.width,
        "depth": params.depth,
        "blocks_per_stage": params.blocks_per_stage,
        "dropout": params.dropout,
        "in_channels": channels,
        "image_size": [height, width],
        "num_classes": card["num_classes"],
        "pixel_mean": card["pixel_mean"],
        "pixel_std": card["pixel_std"],
    }


class NormalizedInput(nn.Module):
    """A model that takes pixels in [0, 1] and normalizes them itself with the training set's per-channel
    statistics (buffers `mean` and `std`), so an exported model needs no separate preprocessing."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(config["pixel_mean"]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(config["pixel_std"]).clamp_min(1e-6).view(1, -1, 1, 1))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std


class ImageClassifier(NormalizedInput):
    """What the built-in architectures share: input normalization, a feature extractor, global pooling and a
    dropout + linear head. Subclasses build `self.features` and say how many channels it ends with."""

    def __init__(self, config: dict[str, Any], features: nn.Module, channels: int) -> None:
        super().__init__(config)
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config["dropout"])
        self.classifier = nn.Linear(channels, config["num_classes"])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(self.normalize(pixels))).flatten(1)
        return self.classifier(self.dropout(x))


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


class ConvNet(ImageClassifier):
    """`depth` blocks of two 3x3 conv-BN-ReLU layers, 2x2 max-pooling between blocks."""

    def __init__(self, config: dict[str, Any]) -> None:
        layers: list[nn.Module] = []
        channels, size = config["in_channels"], min(config["image_size"])
        for block in range(config["depth"]):
            out_channels = config["width"] * 2**block
            for _ in range(2):
                layers += [*conv_bn(channels, out_channels), nn.ReLU(inplace=True)]
                channels = out_channels
            # Pool between blocks while there is room; the global pool handles the rest.
            if block < config["depth"] - 1 and size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        super().__init__(config, nn.Sequential(*layers), channels)


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 conv-BN layers plus a shortcut (1x1 conv-BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn(in_channels, out_channels, stride=stride),
            nn.ReLU(inplace=True),
            *conv_bn(out_channels, out_channels),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(*conv_bn(in_channels, out_channels, kernel_size=1, stride=stride))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(ImageClassifier):
    """A small ResNet (He et al., 2016) for small images: a 3x3 stem, then `depth` stages of
    `blocks_per_stage` basic blocks; each stage doubles the channels and halves the resolution while it can."""

    def __init__(self, config: dict[str, Any]) -> None:
        channels, size = config["width"], min(config["image_size"])
        layers: list[nn.Module] = [*conv_bn(config["in_channels"], channels), nn.ReLU(inplace=True)]
        for stage in range(config["depth"]):
            out_channels = config["width"] * 2**stage
            stride = 2 if stage > 0 and size >= 2 else 1
            size //= stride
            for block in range(config["blocks_per_stage"]):
                layers.append(BasicBlock(channels, out_channels, stride if block == 0 else 1))
                channels = out_channels
        super().__init__(config, nn.Sequential(*layers), channels)


class TimmModel(NormalizedInput):
    """`timm.create_model(name)` (randomly initialized) sized for the data's channels and classes, behind
    the same input normalization as the other architectures; width and depth do not apply."""

    def __init__(self, config: dict[str, Any]) -> None:
        import timm  # optional: model.arch validation already checked that it is installed

        super().__init__(config)
        self.network = timm.create_model(
            config["arch"].removeprefix("timm:"), pretrained=False,
            num_classes=config["num_classes"], in_chans=config["in_channels"], drop_rate=config["dropout"],
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalize(pixels))


# params `model.arch` -> model class ("timm:<name>" -> TimmModel).
ARCHITECTURES: dict[str, type[nn.Module]] = {"cnn": ConvNet, "resnet": ResNet, "timm": TimmModel}


def build_model(config: dict[str, Any]) -> nn.Module:
    kind = config["arch"].partition(":")[0]
    if kind not in ARCHITECTURES:
        raise ValueError(f"unknown model arch {config['arch']!r}; valid: {', '.join(ARCHS)}")
    return ARCHITECTURES[kind](config)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
