"""What an objective reads besides the model's output: the outputs (or inputs) of inner layers named by
module path (`features.2`, `classifier`), captured with forward hooks so that models need no rewriting, and
models it runs without training them (a live teacher).

An objective that reads either implements `ReadsLayers`; the strategies use it to place a live model as they
place the model (sharded under fsdp, cut into a pipeline's stages) and, under pipeline parallelism, to carry
what the hooks captured from the stage that holds a layer to the last one, where the loss is computed
(pipelines/engine/strategies/pipeline_carry.py). The loop and the other strategies never look at it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pipelines.config.base import ParamsError


def layer(model: nn.Module, path: str, key: str) -> nn.Module:
    """The module at `path` in `model`, or ParamsError naming params key `key` and the paths there are."""
    modules = dict(model.named_modules())
    if path not in modules or not path:
        paths = [name for name, module in modules.items() if name and not isinstance(module, (nn.ReLU, nn.Dropout))]
        raise ParamsError(f"{key}: {type(model).__name__} has no layer {path!r}; its layers: {', '.join(paths)}")
    return modules[path]


class Capture:
    """Forward hooks keeping the latest output (or, with `inputs`, the first input) of named layers."""

    def __init__(self, model: nn.Module, paths: Iterable[tuple[str, str]], inputs: bool = False) -> None:
        """`paths`: (module path, params key naming it) pairs."""
        self.values: dict[str, torch.Tensor] = {}
        self.keys: dict[str, str] = {}  # each path's params key, for messages
        self.handles: list[RemovableHandle] = []
        for path, key in paths:
            module = layer(model, path, key)
            self.keys[path] = key
            if inputs:
                self.handles.append(module.register_forward_pre_hook(self._keep_input(path)))
            else:
                self.handles.append(module.register_forward_hook(self._keep_output(path)))

    def _keep_output(self, path: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.values[path] = output
        return hook

    def _keep_input(self, path: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self.values[path] = args[0]
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.values = [], {}


def probe(model: nn.Module, images: torch.Tensor) -> None:
    """One forward in eval mode with no gradient, for the hooks to see the layers' shapes; the model's mode
    (and its batch norm statistics) stay as they were."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(images)
    model.train(was_training)


class LiveModel:
    """A model an objective runs in inference mode, without gradients, beside the one it trains (a live
    teacher); `output` is its latest output. The strategy places `module`; one that runs it itself (a
    pipeline's stages, beside the model's) sets `runs_elsewhere`, and calling it then does nothing: its output
    and what its hooks capture arrive with the batch."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.runs_elsewhere = False
        self.output: torch.Tensor | None = None

    def __call__(self, images: torch.Tensor) -> None:
        if not self.runs_elsewhere:
            with torch.no_grad():
                self.output = self.module(images)


@runtime_checkable
class ReadsLayers(Protocol):
    """An objective (or a loss term) that reads inner layers of the model or runs a live model."""

    def captures(self) -> list[Capture]:
        """The hooks holding what it reads of the model's layers and of its live models' (once set up)."""
        ...

    def live_models(self) -> list[LiveModel]:
        """The models it runs without training them (once set up)."""
        ...


def captures_of(objective: object) -> list[Capture]:
    """The objective's captures, each once, in their order; none if it reads no inner layer."""
    found = objective.captures() if isinstance(objective, ReadsLayers) else []
    return list({id(capture): capture for capture in found}.values())


def live_models_of(objective: object) -> list[LiveModel]:
    """The objective's live models, each once; none if it runs none."""
    found = objective.live_models() if isinstance(objective, ReadsLayers) else []
    return list({id(model): model for model in found}.values())
