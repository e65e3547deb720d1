"""The pipeline-parallel strategy's adapter to an objective that reads inner layers (feature-based
distillation): the layers' outputs are captured by forward hooks (pipelines/engine/capture.py), which fire on
the rank that holds the layer, while the loss is computed on the last rank. `LayerCarry` names each captured
value by its hook and layer path, reads what a stage's forward made, and hands what the earlier stages made
to the hooks of the last one, so that the objective finds them where a one-process forward leaves them."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipelines.engine.capture import Capture, captures_of

Key = tuple[int, str]  # a captured value: its hook's position among the objective's, and the layer's path


class LayerCarry:
    """What the objective's hooks capture, as values a pipeline stage passes on."""

    def __init__(self, objective: object) -> None:
        self.captures: list[Capture] = captures_of(objective)

    def outputs(self) -> dict[Key, torch.Tensor]:
        """What the hooks hold now, by key."""
        return {(index, path): value for index, capture in enumerate(self.captures)
                for path, value in capture.values.items()}

    def made_by(self, run: Callable[[], object]) -> dict[Key, torch.Tensor]:
        """The values that `run` (a forward of some layers) made anew, in their order."""
        before = self.outputs()
        run()
        return {key: value for key, value in self.outputs().items() if before.get(key) is not value}

    def take(self, outputs: dict[Key, torch.Tensor]) -> None:
        """Put `outputs`, made on earlier stages, where the hooks would have kept them."""
        for (index, path), value in outputs.items():
            self.captures[index].values[path] = value

    def name(self, key: Key) -> str:
        """The layer's path and the params key that names it, for messages."""
        index, path = key
        return f"{path} ({self.captures[index].keys[path]})"
