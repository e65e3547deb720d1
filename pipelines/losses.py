"""Distillation losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    mix_labels: torch.Tensor | None = None,
    mix_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy with the labels; for images mixed by mixup or cutmix, each image's loss against both of
    its labels, weighted by each one's share (`mix_weights` is the share of `labels`)."""
    if mix_labels is None:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    first = F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="none")
    second = F.cross_entropy(logits, mix_labels, label_smoothing=label_smoothing, reduction="none")
    return (mix_weights * first + (1.0 - mix_weights) * second).mean()


def hinton_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
    mix_labels: torch.Tensor | None = None,
    mix_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton et al. (2015): alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, labels).

    p^T = softmax(logits / T). The teacher's softened distribution is the target, as in the paper; the
    T^2 factor keeps the soft term's gradient on the same scale as the hard term's when T changes.
    The KL term is averaged over the batch, like the cross-entropy; label smoothing and mixed labels
    (see `cross_entropy`) apply to the hard term.
    """
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=1)
    soft = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean")
    hard = cross_entropy(student_logits, labels, label_smoothing, mix_labels, mix_weights)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard
