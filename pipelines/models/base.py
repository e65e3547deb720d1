"""What the architectures share: input normalization inside the model, and the classifier head."""

from __future__ import annotations

import torch
from torch import nn

from pipelines.models.config import ModelConfig


class NormalizedInput(nn.Module):
    """A model that takes pixels in [0, 1] and normalizes them itself with the training set's per-channel
    statistics (buffers `mean` and `std`), so an exported model needs no separate preprocessing."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(config.pixel_mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(config.pixel_std).clamp_min(1e-6).view(1, -1, 1, 1))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std


class ImageClassifier(NormalizedInput):
    """What the built-in architectures share: input normalization, a feature extractor, global pooling and a
    dropout + linear head. Subclasses build `self.features` and say how many channels it ends with."""

    def __init__(self, config: ModelConfig, features: nn.Module, channels: int) -> None:
        super().__init__(config)
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(channels, config.num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(self.normalize(pixels))).flatten(1)
        return self.classifier(self.dropout(x))


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
