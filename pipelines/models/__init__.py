"""Models: a plain CNN, a small ResNet, any timm model, or a plain deep MLP, built from a ModelConfig.

The table of architectures is pipelines.config.training.ARCHITECTURES (which imports no torch); BUILDERS
here gives the class that builds each of its kinds (tests/test_docs.py checks that they name the same
kinds). A model is rebuilt from its checkpoint alone:
`build_model(ModelConfig.from_dict(checkpoint["model_config"]))` (pipelines.engine.checkpoint does it).
Channels, image size, classes and input normalization come from the dataset card, so the same params fit
8x8 grayscale digits and 32x32 RGB images alike.
"""

from __future__ import annotations

from torch import nn

from pipelines.config.training import ARCHITECTURES
from pipelines.models.cnn import ConvNet
from pipelines.models.config import ModelConfig
from pipelines.models.mlp import MLP
from pipelines.models.resnet import ResNet
from pipelines.models.timm import TimmModel

__all__ = ["BUILDERS", "ModelConfig", "build_model", "count_parameters"]

BUILDERS: dict[str, type[nn.Module]] = {  # ARCHITECTURES' kinds
    "cnn": ConvNet, "resnet": ResNet, "timm": TimmModel, "mlp": MLP,
}


def build_model(config: ModelConfig) -> nn.Module:
    """The model of `config`, randomly initialized from torch's global generator."""
    kind = config.arch.partition(":")[0]
    if kind not in ARCHITECTURES:
        raise ValueError(f"unknown model arch {config.arch!r}; "
                         f"valid: {', '.join(e.form for e in ARCHITECTURES.values())}")
    return BUILDERS[kind](config)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
