"""Early stopping on a validation metric, keeping the weights of the best epoch."""

from __future__ import annotations

import copy

from torch import nn

from pipelines.config.training import EarlyStoppingParams


class EarlyStopping:
    """Call `update` once per epoch; it says stop once `patience` epochs in a row failed to improve the best
    value by more than `min_delta`. val_loss improves downwards, val_accuracy upwards."""

    def __init__(self, params: EarlyStoppingParams) -> None:
        self.params = params
        self.sign = -1.0 if params.metric == "val_loss" else 1.0
        self.best_score = float("-inf")
        self.best_epoch = -1
        self.best_state: dict | None = None
        self.epochs_seen = 0
        self.epochs_without_improvement = 0

    def update(self, value: float, model: nn.Module | None = None) -> bool:
        """Record this epoch's metric (and, if it is the best so far, the model's weights); True means stop."""
        score = self.sign * value
        if score > self.best_score + self.params.min_delta:
            self.best_score, self.best_epoch = score, self.epochs_seen
            self.epochs_without_improvement = 0
            if model is not None:
                self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.epochs_without_improvement += 1
        self.epochs_seen += 1
        return self.epochs_without_improvement >= self.params.patience

    @property
    def best_value(self) -> float:
        return self.sign * self.best_score
