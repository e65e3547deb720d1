"""`resnet`: a small ResNet of basic blocks."""

from __future__ import annotations

import torch
from torch import nn

from pipelines.models.base import ImageClassifier, conv_bn
from pipelines.models.config import ModelConfig


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 conv-BN layers plus a shortcut (1x1 conv-BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn(in_channels, out_channels, stride=stride),
            nn.ReLU(inplace=True),
            *conv_bn(out_channels, out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(*conv_bn(in_channels, out_channels, kernel_size=1, stride=stride))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(ImageClassifier):
    """A small ResNet (He et al., 2016) for small images: a 3x3 stem, then `depth` stages of
    `blocks_per_stage` basic blocks; each stage doubles the channels and halves the resolution while it can."""

    def __init__(self, config: ModelConfig) -> None:
        channels, size = config.width, min(config.image_size)
        layers: list[nn.Module] = [*conv_bn(config.in_channels, channels), nn.ReLU(inplace=True)]
        for stage in range(config.depth):
            out_channels = config.width * 2**stage
            stride = 2 if stage > 0 and size >= 2 else 1
            size //= stride
            for block in range(config.blocks_per_stage):
                layers.append(BasicBlock(channels, out_channels, stride if block == 0 else 1))
                channels = out_channels
        super().__init__(config, nn.Sequential(*layers), channels)
