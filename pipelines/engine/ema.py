"""`regularization.ema_decay`: an exponential moving average of the weights, which is what gets validated,
early-stopped on and saved.

torch's `AveragedModel` keeps a second copy of the whole model, which FSDP's shards and a pipeline's stages
do not have. `WeightAverage` keeps the average of what this process holds instead (`parallel.held`: the
whole model under DDP, this rank's shards under FSDP, its layers in a pipeline stage), updated with torch's
own EMA rule (`get_ema_multi_avg_fn`, as AveragedModel with `use_buffers` applies it: parameters and
buffers, the first update a copy). The averaged weights are put into the model in place while they are
validated (`applied`), and for good at the end (`copy_to_model`). Its `state_dict` holds the averages under
the held module's names (DTensors under FSDP), so a resumable run saves them with DCP as it saves the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from itertools import chain

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from pipelines.engine.tensors import local


class WeightAverage:
    """The EMA of `held`'s parameters and buffers, with `decay` (see the module's doc)."""

    def __init__(self, held: nn.Module, decay: float) -> None:
        self.names = [name for name, _ in chain(held.named_parameters(), held.named_buffers())]
        self.tensors = [tensor.detach() for tensor in chain(held.parameters(), held.buffers())]
        self.averages = [tensor.clone() for tensor in self.tensors]
        self.updates = torch.zeros((), dtype=torch.long)  # averaged so far (AveragedModel's n_averaged) ...
        self.started = False  # ... and whether it is more than 0, known on the host without reading it back
        self.average = get_ema_multi_avg_fn(decay)
        # Grouped by dtype, once: torch's rule lerps floating tensors and rounds integer ones (batch counts).
        self.groups: dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for average, tensor in zip(self.averages, self.tensors):
            pair = self.groups.setdefault(average.dtype, ([], []))
            pair[0].append(local(average))
            pair[1].append(local(tensor))

    @torch.no_grad()
    def update(self) -> None:
        """Take the weights as they are after this optimizer step into the average."""
        if not self.started:
            self._copy(self.tensors, self.averages)
            self.started = True
        else:
            for averages, tensors in self.groups.values():
                self.average(averages, tensors, self.updates)
        self.updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model, and its own ones back afterwards."""
        own = [local(tensor).clone() for tensor in self.tensors]
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                self._copy(own, self.tensors)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Put the averaged weights into the model, for good."""
        self._copy(self.averages, self.tensors)

    def saved(self) -> dict[str, WeightAverage]:
        """What a resumable save holds of it (pipelines/engine/resume/state.py)."""
        return {"ema": self}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"updates": self.updates, **dict(zip(self.names, self.averages))}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """(DCP has loaded the tensors of `state_dict` in place; this takes what a plain dict brings.)"""
        with torch.no_grad():
            self.updates.copy_(state["updates"])
            self.started = bool(self.updates > 0)
            for name, average in zip(self.names, self.averages):
                if state[name] is not average:
                    local(average).copy_(local(state[name]))

    @staticmethod
    def _copy(sources: list[torch.Tensor], targets: list[torch.Tensor]) -> None:
        for source, target in zip(sources, targets):
            local(target).copy_(local(source))


class NoAverage:
    """`ema_decay` unset: the weights trained are the weights kept (WeightAverage's interface, doing nothing)."""

    def update(self) -> None:
        """Nothing to average."""

    def applied(self) -> AbstractContextManager[None]:
        return nullcontext()

    def copy_to_model(self) -> None:
        """The model's weights are the ones to keep."""

    def saved(self) -> dict[str, WeightAverage]:
        return {}


def weight_average(held: nn.Module, decay: float | None) -> WeightAverage | NoAverage:
    """The EMA of `held` with `decay` (`regularization.ema_decay`), or the stand-in when it is unset."""
    return NoAverage() if decay is None else WeightAverage(held, decay)
