"""Early stopping on a validation metric, keeping the weights of the best epoch."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from pipelines.config.training import EarlyStoppingParams
from pipelines.engine.tensors import local

log = logging.getLogger(__name__)


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

    def after_epoch(self, metrics: dict[str, float]) -> bool:
        """`update` with this epoch's value of the metric watched; True means stop (and says so in the log)."""
        stop = self.update(metrics[self.params.metric])
        if stop:
            log.info("early stopping after epoch %d: best %s %.4f at epoch %d", self.epochs_seen, self.params.metric,
                     self.best_value, self.best_epoch + 1)
        return stop

    @torch.no_grad()
    def _keep(self) -> None:
        if self.held is not None:
            for name, tensor in self.held.state_dict().items():
                local(self.best_state[name]).copy_(local(tensor))

    def counters(self) -> dict[str, float | int]:
        """Where it stands, besides the weights (a resumable save holds them, `load_counters` takes them back)."""
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "epochs_seen": self.epochs_seen,
                "epochs_without_improvement": self.epochs_without_improvement}

    def load_counters(self, counters: dict[str, Any]) -> None:
        self.best_score, self.best_epoch = counters["best_score"], counters["best_epoch"]
        self.epochs_seen = counters["epochs_seen"]
        self.epochs_without_improvement = counters["epochs_without_improvement"]

    def saved(self) -> dict[str, dict[str, torch.Tensor]]:
        """What a resumable save holds of it besides the counters: the best epoch's weights."""
        return {"best": self.best_state}

    @property
    def best_value(self) -> float:
        return self.sign * self.best_score


class NoEarlyStopping:
    """`early_stopping` unset: every epoch is trained, and the last one's weights are kept (EarlyStopping's
    interface, never stopping)."""

    best_epoch = -1  # no best epoch to go back to
    best_state: dict[str, torch.Tensor] = {}

    def after_epoch(self, metrics: dict[str, float]) -> bool:
        return False

    def counters(self) -> dict[str, float | int]:
        return {}

    def load_counters(self, counters: dict[str, Any]) -> None:
        """Nothing to take back."""

    def saved(self) -> dict[str, dict[str, torch.Tensor]]:
        return {}


def early_stopping(params: EarlyStoppingParams | None, held: nn.Module) -> EarlyStopping | NoEarlyStopping:
    """Early stopping as `regularization.early_stopping` says, keeping the best weights of `held`; the stand-in
    when it is unset."""
    return NoEarlyStopping() if params is None else EarlyStopping(params, held)
