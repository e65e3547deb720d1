"""Early stopping on a validation metric, keeping the weights of the best epoch."""

from __future__ import annotations

import torch
from torch import nn

from pipelines.config.training import EarlyStoppingParams
from pipelines.engine.tensors import local


class EarlyStopping:
    """Call `update` once per epoch; it says stop once `patience` epochs in a row failed to improve the best
    value by more than `min_delta`. val_loss improves downwards, val_accuracy upwards.

    Given `held` (the part of the model this process holds: the model, its shards under FSDP, a stage's
    layers in a pipeline), the best epoch's weights of it are copied into `best_state`, which is made up
    front in that module's shape, so that a resumable run saves and loads it with DCP like the model."""

    def __init__(self, params: EarlyStoppingParams, held: nn.Module | None = None) -> None:
        self.params = params
        self.sign = -1.0 if params.metric == "val_loss" else 1.0
        self.best_score = float("-inf")
        self.best_epoch = -1  # -1: no epoch has been best yet (the metric was never a number)
        self.held = held
        self.best_state = {} if held is None else {name: tensor.detach().clone()
                                                   for name, tensor in held.state_dict().items()}
        self.epochs_seen = 0
        self.epochs_without_improvement = 0

    def update(self, value: float) -> bool:
        """Record this epoch's metric (and, if it is the best so far, `held`'s weights); True means stop."""
        score = self.sign * value
        if score > self.best_score + self.params.min_delta:
            self.best_score, self.best_epoch = score, self.epochs_seen
            self.epochs_without_improvement = 0
            self._keep()
        else:
            self.epochs_without_improvement += 1
        self.epochs_seen += 1
        return self.epochs_without_improvement >= self.params.patience

    @torch.no_grad()
    def _keep(self) -> None:
        if self.held is not None:
            for name, tensor in self.held.state_dict().items():
                local(self.best_state[name]).copy_(local(tensor))

    def counters(self) -> dict[str, float | int]:
        """Where it stands, besides the weights (a resumed run's `vars(stopper).update(...)` takes them back)."""
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "epochs_seen": self.epochs_seen,
                "epochs_without_improvement": self.epochs_without_improvement}

    @property
    def best_value(self) -> float:
        return self.sign * self.best_score
