"""What the feature-based terms (fitnet, at, rkd, crd) read: the outputs (or inputs) of layers named by
module path (`features.2`, `classifier`), captured with forward hooks, so that models need no rewriting:
the student's as it trains, the teacher's stored or run live (pipelines/kd/teacher.py). The hooks know no
term: the terms' class, `FeatureTerm`, is pipelines/kd/feature_term.py's, built on them and on the teacher."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pipelines.config import ParamsError


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
        self.handles: list[RemovableHandle] = []
        for path, key in paths:
            module = layer(model, path, key)
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
