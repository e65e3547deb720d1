"""What the feature-based terms (fitnet, at, rkd, crd) read: the outputs (or inputs) of layers named by
module path (`features.2`, `classifier`), captured with forward hooks, so that models need no rewriting:
the student's as it trains, the teacher's stored or run live (pipelines/kd/teacher.py)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pipelines.config import ParamsError
from pipelines.config.base import Section
from pipelines.data.images import ImageSet
from pipelines.engine.objective import Batch
from pipelines.kd.base import Context, Term

TEACHER = "teacher's "  # what names the teacher's layers among a term's layer outputs (module paths have no space)


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


class FeatureTerm(Term):
    """A term on (student layer, teacher layer) pairs: their outputs (or, with `of_inputs`, what enters
    them). The student's are captured by hooks that `setup` attaches and `teardown` removes; the teacher's
    come from `context.teacher` (stored by the `teacher_features` stage, or the teacher run live). `setup`
    runs two images through both so that `build` can size what the term learns (a connector) to the layers."""

    of_inputs = False

    def __init__(self, pairs: list[tuple[str, str]], context: Context, keys: tuple[str, str]) -> None:
        super().__init__()
        self.pairs, self.teacher, self.keys = pairs, context.teacher, keys
        self.captured: Capture | None = None

    @classmethod
    def teacher_layers(cls, options: Section) -> list[tuple[str, bool]]:
        """The teacher layers a term of these options reads (for the `teacher_features` stage to store)."""
        return [(options.teacher_layer, cls.of_inputs)]

    def setup(self, model: nn.Module, train_set: ImageSet) -> None:
        device = next(model.parameters()).device
        student_key, teacher_key = self.keys
        self.teacher.attach([((teacher, self.of_inputs), teacher_key) for _, teacher in self.pairs], device,
                            len(train_set))
        self.captured = Capture(model, [(student, student_key) for student, _ in self.pairs], self.of_inputs)
        sample = Batch(images=train_set.images[:2].to(device).float().div_(255.0), labels=train_set.labels[:2],
                       rows=torch.arange(2))
        probe(model, sample.images)
        self.build([(student.shape, teacher.shape) for student, teacher in self.features(sample)])

    def build(self, shapes: list[tuple[torch.Size, torch.Size]]) -> None:
        """Create what the term learns, from each pair's (student, teacher) feature shapes."""

    def features(self, batch: Batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This batch's (student, teacher) features of each pair: the student's from its forward just run,
        the teacher's stored or from one live forward (shared by every term of the batch)."""
        students = [self.captured.values[student] for student, _ in self.pairs]
        teachers = self.teacher.features(batch, students[0].device)
        return [(student, teachers[(teacher, self.of_inputs)]) for student, (_, teacher) in zip(students, self.pairs)]

    def layer_outputs(self) -> dict[str, torch.Tensor]:
        """The student's captured layers by path, and the live teacher's under `teacher's <path>`."""
        if self.captured is None:
            return {}
        teacher = self.teacher.layer_outputs([(path, self.of_inputs) for _, path in self.pairs])
        return dict(self.captured.values) | {f"{TEACHER}{path}": value for (path, _), value in teacher.items()}

    def take_layer_outputs(self, outputs: dict[str, torch.Tensor]) -> None:
        self.captured.values.update({key: value for key, value in outputs.items() if not key.startswith(TEACHER)})
        self.teacher.take_layer_outputs({(key.removeprefix(TEACHER), self.of_inputs): value
                                         for key, value in outputs.items() if key.startswith(TEACHER)})

    def inference_models(self) -> list[nn.Module]:
        return [self.teacher.model] if self.teacher.live else []

    def teardown(self) -> None:
        if self.captured is not None:
            self.captured.remove()
        self.captured = None
        self.teacher.detach()
