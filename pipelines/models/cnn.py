"""`cnn`: plain conv blocks."""

from __future__ import annotations

from torch import nn

from pipelines.models.base import ImageClassifier, conv_bn
from pipelines.models.config import ModelConfig


class ConvNet(ImageClassifier):
    """`depth` blocks of two 3x3 conv-BN-ReLU layers, 2x2 max-pooling between blocks."""

    def __init__(self, config: ModelConfig) -> None:
        layers: list[nn.Module] = []
        channels, size = config.in_channels, min(config.image_size)
        for block in range(config.depth):
            out_channels = config.width * 2**block
            for _ in range(2):
                layers += [*conv_bn(channels, out_channels), nn.ReLU(inplace=True)]
                channels = out_channels
            # Pool between blocks while there is room; the global pool handles the rest.
            if block < config.depth - 1 and size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        super().__init__(config, nn.Sequential(*layers), channels)
