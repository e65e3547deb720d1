"""The objectives the loop minimizes: cross-entropy on (mixed) labels, and Hinton et al.'s distillation
loss, against values and gradients worked out by hand. Each is driven through its objective's forward,
with the identity for a model, so the batch's "images" are the student's logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.engine.objective import Batch, CrossEntropy
from pipelines.engine.objective import cross_entropy as objective_cross_entropy
from pipelines.kd.hinton import Hinton


def batch(logits, labels, mix_labels=None, mix_weights=None) -> Batch:
    return Batch(images=logits, labels=labels, rows=torch.arange(len(labels)), mix_labels=mix_labels,
                 mix_weights=mix_weights)


def hinton_kd_loss(student, teacher, labels, temperature, alpha, label_smoothing=0.0, mix_labels=None,
                   mix_weights=None) -> torch.Tensor:
    """The Hinton objective's loss on `student` logits, with `teacher` as the stored logits of rows 0..B-1."""
    objective = Hinton(teacher, temperature, alpha, label_smoothing)
    loss, _ = objective(nn.Identity(), batch(student, labels, mix_labels, mix_weights))
    return loss


def cross_entropy(logits, labels, label_smoothing=0.0, mix_labels=None, mix_weights=None) -> torch.Tensor:
    return objective_cross_entropy(logits, batch(logits, labels, mix_labels, mix_weights), label_smoothing)

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 1.0, 0.0], [1.0, 1.0, 2.0]]
LABELS = [1, 0]


def softmax(logits: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(value / temperature) for value in logits]
    total = sum(exps)
    return [value / total for value in exps]


def by_hand(student, teacher, labels, temperature, alpha) -> float:
    """alpha * T^2 * mean_i KL(p_teacher_i || p_student_i) + (1 - alpha) * mean_i CE_i, in plain Python."""
    kls, ces = [], []
    for s, t, label in zip(student, teacher, labels):
        p_s, p_t = softmax(s, temperature), softmax(t, temperature)
        kls.append(sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s)))
        ces.append(-math.log(softmax(s)[label]))
    return alpha * temperature**2 * sum(kls) / len(kls) + (1 - alpha) * sum(ces) / len(ces)


def loss(student, teacher, labels, temperature, alpha) -> torch.Tensor:
    return hinton_kd_loss(
        torch.tensor(student, dtype=torch.float64),
        torch.tensor(teacher, dtype=torch.float64),
        torch.tensor(labels),
        temperature,
        alpha,
    )


@pytest.mark.parametrize(("temperature", "alpha"), [(2.0, 0.7), (4.0, 0.9), (1.0, 0.5), (0.5, 0.25)])
def test_loss_matches_the_hand_computed_value(temperature, alpha):
    expected = by_hand(STUDENT, TEACHER, LABELS, temperature, alpha)
    assert float(loss(STUDENT, TEACHER, LABELS, temperature, alpha)) == pytest.approx(expected, rel=1e-12)


def test_soft_term_is_kl_of_student_from_teacher_not_the_reverse():
    forward = by_hand(STUDENT, TEACHER, LABELS, 2.0, 1.0)
    reverse = by_hand(TEACHER, STUDENT, LABELS, 2.0, 1.0)
    assert forward != pytest.approx(reverse)
    assert float(loss(STUDENT, TEACHER, LABELS, 2.0, 1.0)) == pytest.approx(forward, rel=1e-12)


def test_alpha_zero_is_plain_cross_entropy():
    student = torch.tensor(STUDENT)
    labels = torch.tensor(LABELS)
    kd = hinton_kd_loss(student, torch.tensor(TEACHER), labels, temperature=3.0, alpha=0.0)
    assert torch.allclose(kd, F.cross_entropy(student, labels))


def test_alpha_one_with_identical_logits_is_zero():
    logits = torch.tensor(STUDENT)
    kd = hinton_kd_loss(logits, logits.clone(), torch.tensor(LABELS), temperature=4.0, alpha=1.0)
    assert abs(float(kd)) < 1e-6


def test_alpha_one_ignores_the_labels():
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    one = hinton_kd_loss(student, teacher, torch.tensor([0, 0]), temperature=2.0, alpha=1.0)
    other = hinton_kd_loss(student, teacher, torch.tensor([2, 1]), temperature=2.0, alpha=1.0)
    assert torch.equal(one, other)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_soft_gradient_is_temperature_times_probability_gap_over_batch(temperature):
    student = torch.tensor(STUDENT, dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor(TEACHER, dtype=torch.float64)
    hinton_kd_loss(student, teacher, torch.tensor(LABELS), temperature, 1.0).backward()
    batch = len(STUDENT)
    expected = [
        [temperature * (ps - pt) / batch for ps, pt in zip(softmax(s, temperature), softmax(t, temperature))]
        for s, t in zip(STUDENT, TEACHER)
    ]
    assert torch.allclose(student.grad, torch.tensor(expected, dtype=torch.float64), atol=1e-12)



@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_label_smoothing_applies_to_the_hard_term_only(smoothing):
    student, teacher, labels = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    # alpha = 1: the loss is the soft term alone, whatever the smoothing.
    soft_only = hinton_kd_loss(student, teacher, labels, 2.0, 1.0, label_smoothing=smoothing)
    assert torch.equal(soft_only, hinton_kd_loss(student, teacher, labels, 2.0, 1.0))
    # alpha = 0.5: half of the soft term plus half of the smoothed cross-entropy.
    mixed = hinton_kd_loss(student, teacher, labels, 2.0, 0.5, label_smoothing=smoothing)
    expected = 0.5 * soft_only + 0.5 * F.cross_entropy(student, labels, label_smoothing=smoothing)
    assert torch.allclose(mixed, expected)


# --- mixed labels (mixup / cutmix) -------------------------------------------------------------------


def test_mixed_cross_entropy_weights_each_label_s_loss_by_its_share():
    logits = torch.tensor(STUDENT)
    labels, mix_labels, weights = torch.tensor(LABELS), torch.tensor([2, 2]), torch.tensor([0.7, 0.25])
    per_image = [
        w * -math.log(softmax(row)[a]) + (1 - w) * -math.log(softmax(row)[b])
        for row, a, b, w in zip(STUDENT, LABELS, [2, 2], [0.7, 0.25])
    ]
    loss = cross_entropy(logits, labels, mix_labels=mix_labels, mix_weights=weights)
    assert loss.item() == pytest.approx(sum(per_image) / 2, rel=1e-6)


def test_an_unmixed_image_s_loss_is_the_plain_cross_entropy():
    logits, labels = torch.tensor(STUDENT), torch.tensor(LABELS)
    mixed = cross_entropy(logits, labels, 0.1, mix_labels=torch.tensor([0, 2]), mix_weights=torch.ones(2))
    assert mixed.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item(), rel=1e-6)


def test_the_kd_loss_uses_the_mixed_labels_for_its_hard_term():
    student, teacher, labels = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    mixed = {"mix_labels": torch.tensor([2, 2]), "mix_weights": torch.tensor([0.5, 0.5])}
    soft_only = hinton_kd_loss(student, teacher, labels, 2.0, 1.0, **mixed)
    assert soft_only.item() == pytest.approx(hinton_kd_loss(student, teacher, labels, 2.0, 1.0).item())
    hard_only = hinton_kd_loss(student, teacher, labels, 2.0, 0.0, **mixed)
    assert hard_only.item() == pytest.approx(cross_entropy(student, labels, **mixed).item())


def test_the_cross_entropy_objective_is_the_cross_entropy_of_the_model_s_output_with_no_terms():
    logits, labels = torch.tensor(STUDENT), torch.tensor(LABELS)
    loss, terms = CrossEntropy(label_smoothing=0.1)(nn.Identity(), batch(logits, labels))
    assert terms == {}
    assert torch.equal(loss, F.cross_entropy(logits, labels, label_smoothing=0.1))


def test_the_hinton_objective_logs_its_soft_and_hard_terms_before_weighting():
    student, teacher, labels = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    loss, terms = Hinton(teacher, 2.0, 0.7)(nn.Identity(), batch(student, labels))
    assert set(terms) == {"soft", "hard"}
    assert terms["hard"].item() == pytest.approx(F.cross_entropy(student, labels).item())
    assert terms["soft"].item() == pytest.approx(by_hand(STUDENT, TEACHER, LABELS, 2.0, 1.0) / 4.0, rel=1e-6)
    assert loss.item() == pytest.approx(0.7 * 4.0 * terms["soft"].item() + 0.3 * terms["hard"].item(), rel=1e-6)


def test_the_hinton_objective_reads_the_stored_logits_of_the_batch_s_rows():
    teacher = torch.tensor([[9.0, 0.0, 0.0], *TEACHER])  # row 0 belongs to another image
    objective = Hinton(teacher, 2.0, 1.0)
    rows = torch.tensor([1, 2])
    student, labels = torch.tensor(STUDENT), torch.tensor(LABELS)
    loss, _ = objective(nn.Identity(), Batch(images=student, labels=labels, rows=rows))
    assert loss.item() == pytest.approx(hinton_kd_loss(student, torch.tensor(TEACHER), labels, 2.0, 1.0).item())
