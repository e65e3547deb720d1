"""What the architectures share: input normalization inside the model, and the classifier head."""

from __future__ import annotations

import torch
from torch import nn

from pipelines.models.config import ModelConfig


class NormalizedInput(nn.Module):
    """A model that takes pixels in [0, 1] and normalizes them itself with the training set's per-channel
    statistics (buffers `mean` and `std`), so an exported model needs no separate preprocessing."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(config.pixel_mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(config.pixel_std).clamp_min(1e-6).view(1, -1, 1, 1))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std


class ImageClassifier(NormalizedInput):
    """What the built-in architectures share: input normalization, a feature extractor, global pooling and a
    dropout + linear head. Subclasses build `self.features` and say how many channels it ends with."""

    def __init__(self, config: ModelConfig, features: nn.Sequential, channels: int) -> None:
        super().__init__(config)
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(channels, config.num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(self.normalize(pixels))).flatten(1)
        return self.classifier(self.dropout(x))

    def layer_sequence(self) -> list[nn.Module]:
        """The model as layers applied one after the other, `forward` being their composition: the input
        normalization, each unit of the feature extractor (a convolution with its batch norm and activation,
        a pooling, a residual block), the head. They share this model's parameters; a pipeline splits the
        model along them (pipelines/engine/strategies/pipeline.py)."""
        units: list[list[nn.Module]] = [[]]
        for layer in self.features:
            units[-1].append(layer)
            if not isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)):  # an activation (in place) ends its unit
                units.append([])
        features = [unit[0] if len(unit) == 1 else nn.Sequential(*unit) for unit in units if unit]
        return [Normalize(self.mean, self.std), *features, Head(self.pool, self.dropout, self.classifier)]


class Normalize(nn.Module):
    """The input normalization of `NormalizedInput` as a layer of its own (the same statistics buffers)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std


class Head(nn.Module):
    """The classifier head of `ImageClassifier` as a layer of its own: global pooling, dropout, linear."""

    def __init__(self, pool: nn.Module, dropout: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.pool, self.dropout, self.classifier = pool, dropout, classifier

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(features).flatten(1)))


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
