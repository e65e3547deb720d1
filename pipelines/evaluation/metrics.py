"""Evaluation metrics: classification quality (through scikit-learn), calibration and CPU latency."""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support
from torch import nn


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, class_names: list[str], calibration_bins: int
) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, ECE and NLL of `logits`."""
    predictions = logits.argmax(1)
    y_true, y_pred = labels.numpy(), predictions.numpy()
    classes = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    return {
        "accuracy": float((predictions == labels).float().mean()),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "nll": float(F.cross_entropy(logits, labels)),
        "ece": expected_calibration_error(logits.softmax(1), labels, calibration_bins),
        "per_class": {
            name: {
                "precision": float(precision[index]),
                "recall": float(recall[index]),
                "f1": float(f1[index]),
                "support": int(support[index]),
            }
            for index, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int) -> float:
    """ECE: the |accuracy - confidence| gap of equal-width confidence bins, weighted by their share of samples."""
    confidence, predictions = probs.max(1)
    correct = (predictions == labels).float()
    # Bin b holds confidences in (b/bins, (b+1)/bins]; confidence is always > 0, so index 0 is the lowest bin.
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    gap = torch.zeros(bins, dtype=confidence.dtype).index_add_(0, index, confidence - correct)
    return float(gap.abs().sum() / len(labels))


def near_zero_fraction(model: nn.Module, threshold: float) -> float:
    """Share of weights (tensors with more than one dim) with |w| < threshold: how sparse L1 made them."""
    weights = [parameter.detach().flatten() for parameter in model.parameters() if parameter.ndim > 1]
    values = torch.cat(weights)
    return float((values.abs() < threshold).float().mean())


@torch.inference_mode()
def latency_ms(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, repeats: int) -> float:
    """Median wall time in milliseconds of one forward pass over a batch, on the CPU, after warm-up."""
    model = model.cpu().eval()
    batch = torch.rand(batch_size, *input_shape)
    for _ in range(min(5, repeats)):
        model(batch)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(batch)
        timings.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(timings)
