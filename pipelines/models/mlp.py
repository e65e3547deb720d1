"""`mlp`: a plain deep network of fully connected layers, with no residual connections, whose hidden layers
start and are normalized as `init` and `norm` say (the optimization study trains one 50 layers deep)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pipelines.models.base import NormalizedInput
from pipelines.models.config import ModelConfig

# How a hidden layer's weights start (its bias at zero, but for the default). Kaiming and orthogonal keep the
# variance of the signal the same from one ReLU layer to the next; torch's default (weight variance
# 1/(3 fan_in)) divides it by about 6 at every layer, so that deep in the net the input has faded out.
INITIALIZERS: dict[str, Callable[[torch.Tensor], object] | None] = {  # pipelines.config.training.Initialization
    "default": None,
    "kaiming": lambda weight: nn.init.kaiming_normal_(weight, nonlinearity="relu"),
    "orthogonal": lambda weight: nn.init.orthogonal_(weight, gain=nn.init.calculate_gain("relu")),
}
# What follows each hidden linear layer before its ReLU, given the layer's width.
NORMALIZATIONS: dict[str, Callable[[int], list[nn.Module]]] = {  # pipelines.config.training.Normalization
    "none": lambda width: [],
    "batch": lambda width: [nn.BatchNorm1d(width)],
    "layer": lambda width: [nn.LayerNorm(width)],
}


class MLP(NormalizedInput):
    """The flattened pixels through `depth` hidden layers of `width` units (linear, `norm`, ReLU), then
    dropout and a linear classifier: the plain network whose trainability depends on its start."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        units = config.in_channels * config.image_size[0] * config.image_size[1]
        layers: list[nn.Module] = [nn.Flatten()]
        for _ in range(config.depth):
            hidden = nn.Linear(units, config.width)
            initialize = INITIALIZERS[config.init]
            if initialize is not None:
                initialize(hidden.weight)
                nn.init.zeros_(hidden.bias)
            layers += [hidden, *NORMALIZATIONS[config.norm](config.width), nn.ReLU(inplace=True)]
            units = config.width
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(units, config.num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(self.normalize(pixels))))
