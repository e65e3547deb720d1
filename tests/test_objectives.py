"""The objectives the loop minimizes: cross-entropy on (mixed) labels, and the distillation terms (kd, dkd,
dist) and their weighted sum, against values and gradients worked out by hand. Each is driven through its
objective's forward, with the identity for a model, so the batch's "images" are the student's logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.engine.objective import Batch, CrossEntropy
from pipelines.engine.objective import cross_entropy as objective_cross_entropy
from pipelines.kd.base import Distillation
from pipelines.kd.ce import CE
from pipelines.kd.dist import DIST
from pipelines.kd.dkd import DKD
from pipelines.kd.kd import KD


def batch(logits, labels, mix_labels=None, mix_weights=None) -> Batch:
    return Batch(images=logits, labels=labels, rows=torch.arange(len(labels)), mix_labels=mix_labels,
                 mix_weights=mix_weights)


def hinton(teacher, temperature, alpha, label_smoothing=0.0) -> Distillation:
    """Hinton et al.'s loss as two terms: alpha * kd + (1 - alpha) * ce, `teacher` the stored logits of rows 0..B-1."""
    return Distillation([("kd", alpha, KD(teacher, temperature)), ("ce", 1 - alpha, CE(label_smoothing))])


def hinton_kd_loss(student, teacher, labels, temperature, alpha, label_smoothing=0.0, mix_labels=None,
                   mix_weights=None) -> torch.Tensor:
    loss, _ = hinton(teacher, temperature, alpha, label_smoothing)(nn.Identity(),
                                                                   batch(student, labels, mix_labels, mix_weights))
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


def test_a_weighted_sum_logs_each_term_before_weighting_under_its_method_s_name():
    student, teacher, labels = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    loss, terms = hinton(teacher, 2.0, 0.7)(nn.Identity(), batch(student, labels))
    assert set(terms) == {"kd", "ce"}
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(student, labels).item())
    assert terms["kd"].item() == pytest.approx(by_hand(STUDENT, TEACHER, LABELS, 2.0, 1.0), rel=1e-6)
    assert loss.item() == pytest.approx(0.7 * terms["kd"].item() + 0.3 * terms["ce"].item(), rel=1e-6)


def test_the_kd_term_reads_the_stored_logits_of_the_batch_s_rows():
    teacher = torch.tensor([[9.0, 0.0, 0.0], *TEACHER])  # row 0 belongs to another image
    objective = hinton(teacher, 2.0, 1.0)
    rows = torch.tensor([1, 2])
    student, labels = torch.tensor(STUDENT), torch.tensor(LABELS)
    loss, _ = objective(nn.Identity(), Batch(images=student, labels=labels, rows=rows))
    assert loss.item() == pytest.approx(hinton_kd_loss(student, torch.tensor(TEACHER), labels, 2.0, 1.0).item())


# --- dkd and dist, and weighted sums of several terms --------------------------------------------------

STUDENT3 = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [0.3, 0.1, -0.4]]
TEACHER3 = [[2.0, 1.0, 0.0], [1.0, 1.0, 2.0], [0.0, 1.5, 0.2]]
LABELS3 = [1, 0, 2]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def dkd_by_hand(student, teacher, labels, temperature, alpha, beta) -> float:
    """T^2 * (alpha * mean TCKD + beta * mean NCKD), from the definitions (Zhao et al., 2022)."""
    tckds, nckds = [], []
    for s, t, label in zip(student, teacher, labels):
        p_s, p_t = softmax(s, temperature), softmax(t, temperature)
        tckds.append(kl([p_t[label], 1 - p_t[label]], [p_s[label], 1 - p_s[label]]))
        rest_s = [p / (1 - p_s[label]) for index, p in enumerate(p_s) if index != label]
        rest_t = [p / (1 - p_t[label]) for index, p in enumerate(p_t) if index != label]
        nckds.append(kl(rest_t, rest_s))
    return temperature**2 * (alpha * sum(tckds) + beta * sum(nckds)) / len(tckds)


def pearson_by_hand(a: list[float], b: list[float]) -> float:
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    covariance = sum((x - mean_a) * (y - mean_b) for x, y in zip(a, b))
    return covariance / math.sqrt(sum((x - mean_a) ** 2 for x in a) * sum((y - mean_b) ** 2 for y in b))


def dist_by_hand(student, teacher, temperature, beta, gamma) -> float:
    """T^2 * (beta * (1 - mean inter-class r) + gamma * (1 - mean intra-class r)) (Huang et al., 2022)."""
    p_s = [softmax(row, temperature) for row in student]
    p_t = [softmax(row, temperature) for row in teacher]
    inter = [pearson_by_hand(s, t) for s, t in zip(p_s, p_t)]
    intra = [pearson_by_hand([row[c] for row in p_s], [row[c] for row in p_t]) for c in range(len(p_s[0]))]
    return temperature**2 * (beta * (1 - sum(inter) / len(inter)) + gamma * (1 - sum(intra) / len(intra)))


def term_value(term, student) -> torch.Tensor:
    return term(student, batch(student, torch.tensor(LABELS3)))


DOUBLE = torch.float64


@pytest.mark.parametrize(("temperature", "alpha", "beta"), [(4.0, 1.0, 8.0), (1.0, 0.5, 2.0), (2.0, 0.0, 1.0)])
def test_dkd_matches_the_hand_computed_value(temperature, alpha, beta):
    term = DKD(torch.tensor(TEACHER3, dtype=DOUBLE), temperature, alpha, beta)
    value = term_value(term, torch.tensor(STUDENT3, dtype=DOUBLE))
    assert value.item() == pytest.approx(dkd_by_hand(STUDENT3, TEACHER3, LABELS3, temperature, alpha, beta), rel=1e-10)


@pytest.mark.parametrize(("temperature", "beta", "gamma"), [(1.0, 1.0, 1.0), (4.0, 2.0, 0.5)])
def test_dist_matches_the_hand_computed_value(temperature, beta, gamma):
    term = DIST(torch.tensor(TEACHER3, dtype=DOUBLE), temperature, beta, gamma)
    value = term_value(term, torch.tensor(STUDENT3, dtype=DOUBLE))
    assert value.item() == pytest.approx(dist_by_hand(STUDENT3, TEACHER3, temperature, beta, gamma), rel=1e-10)


def finite_difference_gradient(function, point: list[list[float]], step: float = 1e-6) -> list[list[float]]:
    """The gradient of a plain-Python function of a matrix, by central differences."""
    gradient = []
    for i, row in enumerate(point):
        gradient.append([])
        for j in range(len(row)):
            up = [list(r) for r in point]
            down = [list(r) for r in point]
            up[i][j] += step
            down[i][j] -= step
            gradient[-1].append((function(up) - function(down)) / (2 * step))
    return gradient


@pytest.mark.parametrize(("name", "term", "by_hand"), [
    ("dkd", DKD(torch.tensor(TEACHER3, dtype=DOUBLE), 2.0, 1.0, 8.0),
     lambda s: dkd_by_hand(s, TEACHER3, LABELS3, 2.0, 1.0, 8.0)),
    ("dist", DIST(torch.tensor(TEACHER3, dtype=DOUBLE), 1.0, 1.0, 1.0),
     lambda s: dist_by_hand(s, TEACHER3, 1.0, 1.0, 1.0)),
])
def test_the_gradient_of_each_logit_term_is_that_of_its_hand_computed_definition(name, term, by_hand):
    student = torch.tensor(STUDENT3, dtype=DOUBLE, requires_grad=True)
    term_value(term, student).backward()
    expected = torch.tensor(finite_difference_gradient(by_hand, STUDENT3), dtype=DOUBLE)
    assert torch.allclose(student.grad, expected, atol=1e-7), name


def test_dkd_with_the_teacher_s_logits_is_zero_and_dist_is_zero_for_perfectly_related_predictions():
    logits = torch.tensor(STUDENT3, dtype=DOUBLE)
    assert abs(term_value(DKD(logits.clone(), 4.0, 1.0, 8.0), logits).item()) < 1e-12
    assert abs(term_value(DIST(logits.clone(), 1.0, 1.0, 1.0), logits).item()) < 1e-12


def test_a_weighted_sum_honours_its_weights_and_names_a_method_used_twice_apart():
    student, teacher = torch.tensor(STUDENT3, dtype=DOUBLE), torch.tensor(TEACHER3, dtype=DOUBLE)
    terms = [("kd", 0.5, KD(teacher, 4.0)), ("dkd", 2.0, DKD(teacher, 4.0, 1.0, 8.0)),
             ("dist", 0.25, DIST(teacher, 1.0, 1.0, 1.0)), ("ce", 0.1, CE()), ("kd_2", 3.0, KD(teacher, 1.0))]
    loss, logged = Distillation(terms)(nn.Identity(), batch(student, torch.tensor(LABELS3)))
    assert list(logged) == ["kd", "dkd", "dist", "ce", "kd_2"]
    assert logged["kd_2"].item() != pytest.approx(logged["kd"].item())
    assert loss.item() == pytest.approx(sum(weight * logged[name].item() for name, weight, _ in terms), rel=1e-12)
