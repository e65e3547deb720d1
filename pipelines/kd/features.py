"""What the feature-based terms (fitnet, at, rkd) read: the outputs (or inputs) of layers named by module
path (`features.2`, `classifier`), captured with forward hooks, so that models need no rewriting; the
student's as it trains, and the trained teacher's, run live in inference mode beside it.

The live teacher is loaded from models/teacher.pt once per student, frozen, in eval mode on the student's
device; every term of a batch reads one teacher forward. (Teacher features are not stored on disk: every
feature-based student runs the teacher live, and its log says so.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pipelines.config import ParamsError
from pipelines.data.images import ImageSet
from pipelines.engine.checkpoint import load_model
from pipelines.engine.objective import Batch
from pipelines.kd.base import Context, Term

log = logging.getLogger(__name__)


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


class LiveTeacher:
    """The trained teacher, frozen, in eval mode; `run(images)` runs it once per batch for every term."""

    def __init__(self, path) -> None:
        self.path = path
        self.model: nn.Module | None = None
        self._last: torch.Tensor | None = None

    def load(self, device: torch.device) -> nn.Module:
        if self.model is None:
            self.model, _ = load_model(self.path)
            self.model.to(device).requires_grad_(False)
            log.info("teacher features: the teacher (%s) runs live beside the student, in inference mode", self.path)
        return self.model

    @torch.no_grad()
    def run(self, images: torch.Tensor) -> None:
        """Run the teacher on this batch's images, unless it ran on them already (another term asked)."""
        if images is not self._last:
            self.model(images)
            self._last = images


def probe(model: nn.Module, images: torch.Tensor) -> None:
    """One forward in eval mode with no gradient, for the hooks to see the layers' shapes; the model's mode
    (and its batch norm statistics) stay as they were."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(images)
    model.train(was_training)


class FeatureTerm(Term):
    """A term on (student layer, teacher layer) pairs: their outputs (or, with `of_inputs`, the inputs
    entering them), captured by hooks that `setup` attaches and `teardown` removes. `setup` runs one probe
    batch through both models so that `build` can size what the term learns (a connector) to the layers."""

    reads_layers = True
    of_inputs = False

    def __init__(self, pairs: list[tuple[str, str]], context: Context, keys: tuple[str, str]) -> None:
        super().__init__()
        self.pairs, self.teacher, self.keys = pairs, context.teacher, keys
        self.captured: tuple[Capture, Capture] | None = None

    def setup(self, model: nn.Module, train_set: ImageSet) -> None:
        device = next(model.parameters()).device
        teacher = self.teacher.load(device)
        student_keys, teacher_keys = self.keys
        self.captured = (Capture(model, [(student, student_keys) for student, _ in self.pairs], self.of_inputs),
                         Capture(teacher, [(teacher_layer, teacher_keys) for _, teacher_layer in self.pairs],
                                 self.of_inputs))
        sample = train_set.images[:2].to(device).float().div_(255.0)
        probe(model, sample)
        probe(teacher, sample)
        self.build([(student.shape, teacher_out.shape) for student, teacher_out in self._pairs()])

    def build(self, shapes: list[tuple[torch.Size, torch.Size]]) -> None:
        """Create what the term learns, from each pair's (student, teacher) feature shapes."""

    def features(self, batch: Batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This batch's (student, teacher) features of each pair: the student's from its forward just run,
        the teacher's from one forward of the live teacher (shared by every term of the batch)."""
        self.teacher.run(batch.images)
        return self._pairs()

    def _pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        student, teacher = self.captured
        return [(student.values[s], teacher.values[t]) for s, t in self.pairs]

    def teardown(self) -> None:
        for capture in self.captured or ():
            capture.remove()
        self.captured = None
