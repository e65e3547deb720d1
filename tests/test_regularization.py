"""Regularization, one knob at a time, against the arithmetic it promises.

Weight decay (coupled and decoupled), the L1 penalty, gradient clipping, label smoothing, early stopping
and the EMA of the weights. Optimizer steps use hand-set gradients on tiny float64 layers, so every
expected value is a line of arithmetic.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.config.optim import AdagradParams, AdamParams, AdamWParams, RMSpropParams, SGDParams
from pipelines.config.schedules import ConstantSchedule
from pipelines.config.training import (EarlyStoppingParams, GradClipParams, ModelParams, RegularizationParams,
                                       TrainParams, TrainingParams)
from pipelines.data.images import ImageSet
from pipelines.engine.early_stopping import EarlyStopping
from pipelines.engine.objective import Batch, CrossEntropy
from pipelines.engine.optim import add_l1_gradient, build_optimizer
from pipelines.engine.runtime import Runtime
from pipelines.engine.inference import predict_logits, val_metrics
from pipelines.engine.loop import fit
from pipelines.engine.optim import clip_gradients

CPU = torch.device("cpu")
LR, WD = 0.1, 0.5

WEIGHT = [[1.0, -2.0], [0.5, 3.0]]
BIAS = [0.25, -1.0]
WEIGHT_GRAD = [[0.2, -0.4], [-0.01, 0.3]]
BIAS_GRAD = [0.6, -0.05]



def validate(model: nn.Module, images: ImageSet) -> dict[str, float]:
    """The validation metrics of `model` computed plainly: all its logits, then their mean loss and accuracy."""
    return val_metrics(predict_logits(model, images.images, CPU), images.labels)

def layer() -> nn.Linear:
    """A float64 2x2 linear layer with the weights and biases above, and the gradients above set by hand."""
    linear = nn.Linear(2, 2).double()
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(WEIGHT, dtype=torch.float64))
        linear.bias.copy_(torch.tensor(BIAS, dtype=torch.float64))
    linear.weight.grad = torch.tensor(WEIGHT_GRAD, dtype=torch.float64)
    linear.bias.grad = torch.tensor(BIAS_GRAD, dtype=torch.float64)
    return linear


def tensors():
    """(weight, weight gradient, bias, bias gradient) as set by `layer`."""
    return (
        torch.tensor(WEIGHT, dtype=torch.float64), torch.tensor(WEIGHT_GRAD, dtype=torch.float64),
        torch.tensor(BIAS, dtype=torch.float64), torch.tensor(BIAS_GRAD, dtype=torch.float64),
    )


def decay(mode: str, weight_decay: float = WD) -> RegularizationParams:
    return RegularizationParams(weight_decay=weight_decay, weight_decay_mode=mode)


# --- weight decay ----------------------------------------------------------------------------------


def test_coupled_decay_with_plain_sgd_adds_wd_times_p_to_the_gradient_of_the_weights_only():
    linear = layer()
    w, g, b, gb = tensors()
    build_optimizer(linear.parameters(), SGDParams(name="sgd", lr=LR), decay("coupled")).step()
    assert torch.allclose(linear.weight, w - LR * (g + WD * w), rtol=0, atol=1e-15)
    assert torch.allclose(linear.bias, b - LR * gb, rtol=0, atol=1e-15)  # biases are not decayed


def test_coupled_decay_of_biases_too_when_decay_bias_and_norm():
    linear = layer()
    w, g, b, gb = tensors()
    regularization = RegularizationParams(weight_decay=WD, weight_decay_mode="coupled", decay_bias_and_norm=True)
    build_optimizer(linear.parameters(), SGDParams(name="sgd", lr=LR), regularization).step()
    assert torch.allclose(linear.weight, w - LR * (g + WD * w), rtol=0, atol=1e-15)
    assert torch.allclose(linear.bias, b - LR * (gb + WD * b), rtol=0, atol=1e-15)


def test_decoupled_decay_with_sgd_shrinks_the_weights_outside_the_gradient():
    linear = layer()
    w, g, b, gb = tensors()
    build_optimizer(linear.parameters(), SGDParams(name="sgd", lr=LR), decay("decoupled")).step()
    assert torch.allclose(linear.weight, w * (1 - LR * WD) - LR * g, rtol=0, atol=1e-15)
    assert torch.allclose(linear.bias, b - LR * gb, rtol=0, atol=1e-15)
    # The decay never touched the gradient.
    assert torch.equal(linear.weight.grad, g)
    assert torch.equal(linear.bias.grad, gb)


def test_decoupled_decay_uses_the_lr_of_each_step():
    linear = layer()
    w, g, _, _ = tensors()
    optimizer = build_optimizer(linear.parameters(), SGDParams(name="sgd", lr=LR), decay("decoupled"))
    for group in optimizer.param_groups:
        group["lr"] = 0.01  # as a schedule would set it
    optimizer.step()
    assert torch.allclose(linear.weight, w * (1 - 0.01 * WD) - 0.01 * g, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "params",
    [
        SGDParams(name="sgd", lr=LR, momentum=0.9),
        AdagradParams(name="adagrad", lr=LR),
        RMSpropParams(name="rmsprop", lr=LR, momentum=0.5, centered=True),
    ],
    ids=["sgd-momentum", "adagrad", "rmsprop"],
)
def test_decoupled_decay_is_the_undecayed_step_taken_from_the_shrunk_weights(params):
    # For optimizers without torch's own decoupled decay, each step first does p <- p * (1 - lr * wd),
    # then the usual update from the (unchanged) gradient.
    decayed = layer()
    build_optimizer(decayed.parameters(), params, decay("decoupled")).step()

    reference = layer()
    with torch.no_grad():
        reference.weight.mul_(1 - LR * WD)
    build_optimizer(reference.parameters(), params, decay("coupled", 0.0)).step()

    assert torch.allclose(decayed.weight, reference.weight, rtol=0, atol=1e-15)
    assert torch.allclose(decayed.bias, reference.bias, rtol=0, atol=1e-15)


def adam_first_step(p: torch.Tensor, g: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Adam's bias-corrected first step: m_hat = g and v_hat = g^2, so p - lr * g / (|g| + eps)."""
    return p - LR * g / (g.abs() + eps)


def test_decoupled_decay_with_adam_shrinks_the_weights_and_steps_on_the_raw_gradient():
    linear = layer()
    w, g, b, gb = tensors()
    build_optimizer(linear.parameters(), AdamParams(name="adam", lr=LR), decay("decoupled")).step()
    assert torch.allclose(linear.weight, adam_first_step(w * (1 - LR * WD), g), rtol=0, atol=1e-12)
    assert torch.allclose(linear.bias, adam_first_step(b, gb), rtol=0, atol=1e-12)


def test_adamw_decoupled_is_the_same_step_as_adam_decoupled():
    adam, adamw = layer(), layer()
    build_optimizer(adam.parameters(), AdamParams(name="adam", lr=LR), decay("decoupled")).step()
    build_optimizer(adamw.parameters(), AdamWParams(name="adamw", lr=LR), decay("decoupled")).step()
    assert torch.allclose(adam.weight, adamw.weight, rtol=0, atol=1e-15)
    assert torch.allclose(adam.bias, adamw.bias, rtol=0, atol=1e-15)


def test_coupled_decay_with_adam_enters_the_gradient_and_so_is_normalized_away():
    coupled, decoupled = layer(), layer()
    w, g, _, _ = tensors()
    build_optimizer(coupled.parameters(), AdamParams(name="adam", lr=LR), decay("coupled")).step()
    build_optimizer(decoupled.parameters(), AdamParams(name="adam", lr=LR), decay("decoupled")).step()
    # Coupled: Adam normalizes g + wd * p as a whole.
    assert torch.allclose(coupled.weight, adam_first_step(w, g + WD * w), rtol=0, atol=1e-12)
    # Weight [1, 0] has gradient -0.01: with coupled decay its effective gradient -0.01 + 0.5 * 0.5 = 0.24
    # is positive and the weight steps down (0.5 - 0.1 = 0.4); decoupled it shrinks (0.5 * 0.95 = 0.475)
    # and then steps up along -g (0.475 + 0.1 = 0.575).
    assert coupled.weight[1, 0].item() == pytest.approx(0.4, abs=1e-7)  # eps shaves off ~1e-9
    assert decoupled.weight[1, 0].item() == pytest.approx(0.575, abs=1e-7)


# --- L1 ---------------------------------------------------------------------------------------------


def test_l1_adds_l1_times_sign_of_w_to_the_weight_gradients_and_nothing_to_biases_or_norms():
    coefficient = 0.03
    x = torch.tensor([[1.0, -0.5], [0.25, 2.0], [-1.5, 0.75]], dtype=torch.float64)

    def gradients(with_l1: bool) -> list[torch.Tensor]:
        model = nn.Sequential(layer(), nn.BatchNorm1d(2).double())
        model.zero_grad()  # drop the hand-set gradients
        model(x).pow(2).mean().backward()
        if with_l1:
            add_l1_gradient(model, coefficient)
        return [parameter.grad for parameter in model.parameters()]

    weight, bias, norm_weight, norm_bias = gradients(with_l1=False)
    weight_l1, *others_l1 = gradients(with_l1=True)
    signs = torch.tensor([[1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(weight_l1, weight + coefficient * signs, rtol=0, atol=1e-15)
    for plain, with_l1 in zip([bias, norm_weight, norm_bias], others_l1):
        assert torch.equal(with_l1, plain)


def test_the_l1_gradient_is_that_of_the_penalty_added_to_the_loss():
    coefficient = 0.03
    x = torch.tensor([[1.0, -0.5], [0.25, 2.0], [-1.5, 0.75]], dtype=torch.float64)
    added, penalized = layer(), layer()
    added.zero_grad()
    penalized.zero_grad()
    added(x).pow(2).mean().backward()
    add_l1_gradient(added, coefficient)
    (penalized(x).pow(2).mean() + coefficient * penalized.weight.abs().sum()).backward()
    assert torch.equal(added.weight.grad, penalized.weight.grad)
    assert torch.equal(added.bias.grad, penalized.bias.grad)


# --- gradient clipping ------------------------------------------------------------------------------


def clip_layer(weight_grad: list[list[float]], bias_grad: list[float]) -> nn.Linear:
    linear = nn.Linear(2, 1).double()
    linear.weight.grad = torch.tensor(weight_grad, dtype=torch.float64)
    linear.bias.grad = torch.tensor(bias_grad, dtype=torch.float64)
    return linear


def total_norm(linear: nn.Linear) -> float:
    return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in linear.parameters()))


def test_clipping_by_norm_scales_all_gradients_to_the_max_global_norm():
    linear = clip_layer([[3.0, 4.0]], [12.0])  # global norm sqrt(9 + 16 + 144) = 13
    clip_gradients(linear.parameters(), GradClipParams(by="norm", max=1.0))
    assert total_norm(linear) <= 1.0
    assert total_norm(linear) == pytest.approx(1.0, abs=1e-6)
    assert linear.weight.grad.flatten().tolist() == pytest.approx([3 / 13, 4 / 13], abs=1e-6)
    assert linear.bias.grad.tolist() == pytest.approx([12 / 13], abs=1e-6)


def test_clipping_by_norm_leaves_gradients_within_the_max_alone():
    linear = clip_layer([[0.3, 0.4]], [0.0])  # norm 0.5
    clip_gradients(linear.parameters(), GradClipParams(by="norm", max=1.0))
    assert linear.weight.grad.tolist() == [[0.3, 0.4]]


def test_clipping_by_value_clamps_each_element_to_plus_minus_max():
    linear = clip_layer([[3.0, -0.2]], [-12.0])
    clip_gradients(linear.parameters(), GradClipParams(by="value", max=0.5))
    assert all(float(p.grad.abs().max()) <= 0.5 for p in linear.parameters())
    assert linear.weight.grad.tolist() == [[0.5, -0.2]]
    assert linear.bias.grad.tolist() == [-0.5]


def test_no_clipping_configured_changes_nothing():
    linear = clip_layer([[3.0, -0.2]], [-12.0])
    clip_gradients(linear.parameters(), None)
    assert linear.weight.grad.tolist() == [[3.0, -0.2]] and linear.bias.grad.tolist() == [-12.0]


# --- label smoothing --------------------------------------------------------------------------------


def test_label_smoothing_mixes_the_target_with_a_uniform_distribution():
    logits = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    labels = [1, 0]
    smoothing, classes = 0.2, 3

    # CE against the target (1 - e) * onehot + e / K: (1 - e) * -log p_y + (e / K) * sum_k -log p_k.
    def row(values, label):
        total = sum(math.exp(v) for v in values)
        neg_log_p = [-math.log(math.exp(v) / total) for v in values]
        return (1 - smoothing) * neg_log_p[label] + smoothing / classes * sum(neg_log_p)

    expected = sum(row(values, label) for values, label in zip(logits, labels)) / len(labels)
    student, targets = torch.tensor(logits, dtype=torch.float64), torch.tensor(labels)
    smoothed, _ = CrossEntropy(label_smoothing=smoothing)(nn.Identity(), full_batch(student, targets))
    plain, _ = CrossEntropy()(nn.Identity(), full_batch(student, targets))
    assert float(smoothed) == pytest.approx(expected, rel=1e-12)
    assert float(smoothed) != pytest.approx(float(plain))
    assert float(plain) == pytest.approx(float(F.cross_entropy(student, targets)), rel=1e-12)


def full_batch(logits: torch.Tensor, labels: torch.Tensor) -> Batch:
    return Batch(images=logits, labels=labels, rows=torch.arange(len(labels)))


# --- early stopping ---------------------------------------------------------------------------------


def stopper(metric: str = "val_accuracy", patience: int = 2, min_delta: float = 0.0) -> EarlyStopping:
    return EarlyStopping(EarlyStoppingParams(metric=metric, patience=patience, min_delta=min_delta))


def test_early_stopping_stops_after_patience_epochs_without_a_new_best_accuracy():
    early = stopper("val_accuracy", patience=2)
    decisions = [early.update(value) for value in [0.5, 0.6, 0.6, 0.59]]
    # 0.6 again (epoch 2) and 0.59 (epoch 3) are not improvements: the second of them stops the run,
    # before 0.61 would have been seen.
    assert decisions == [False, False, False, True]
    assert (early.best_epoch, early.best_value) == (1, pytest.approx(0.6))


def test_an_improvement_resets_the_patience():
    early = stopper("val_accuracy", patience=2)
    decisions = [early.update(value) for value in [0.5, 0.6, 0.6, 0.61, 0.6, 0.6]]
    assert decisions == [False, False, False, False, False, True]
    assert early.best_epoch == 3


def test_min_delta_makes_smaller_improvements_not_count():
    strict = stopper("val_accuracy", patience=2, min_delta=0.01)
    assert [strict.update(value) for value in [0.5, 0.505, 0.509]] == [False, False, True]
    assert strict.best_epoch == 0
    plain = stopper("val_accuracy", patience=2)
    assert [plain.update(value) for value in [0.5, 0.505, 0.509]] == [False, False, False]
    assert plain.best_epoch == 2


def test_val_loss_improves_downwards():
    early = stopper("val_loss", patience=2)
    assert [early.update(value) for value in [1.0, 0.8, 0.9, 0.85]] == [False, False, False, True]
    assert (early.best_epoch, early.best_value) == (1, pytest.approx(0.8))
    rising = stopper("val_loss", patience=2)
    assert [rising.update(value) for value in [1.0, 1.1, 1.2]] == [False, False, True]
    assert rising.best_epoch == 0


def test_early_stopping_keeps_a_copy_of_the_best_weights():
    model = nn.Linear(2, 2)
    early = EarlyStopping(EarlyStoppingParams(metric="val_accuracy", patience=3), model)
    early.update(0.7)
    best = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on in place
    early.update(0.6)  # worse: the best weights stay those of epoch 0
    with torch.no_grad():
        model.weight.fill_(0.0)
    assert early.best_state.keys() == best.keys()
    for name, tensor in best.items():
        assert torch.equal(early.best_state[name], tensor), name


# --- early stopping and EMA inside fit --------------------------------------------------------------


def image_set(count: int = 12) -> ImageSet:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (count, 1, 8, 8), dtype=torch.uint8, generator=generator)
    return ImageSet(images, torch.arange(count) % 3, ["a", "b", "c"])


def fresh_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def training(epochs: int, lr: float = 0.5, **regularization) -> TrainingParams:
    return TrainingParams(
        model=ModelParams(width=1, depth=1, dropout=0.0),
        train=TrainParams(epochs=epochs, batch_size="full"),  # one optimizer step per epoch
        optimizer=SGDParams(name="sgd", lr=lr),
        schedule=ConstantSchedule(name="constant"),
        regularization=RegularizationParams(weight_decay=0.0, weight_decay_mode="coupled", **regularization),
    )


def trained(epochs: int, lr: float = 0.5, **regularization):
    """(model passed in, module returned, metrics) of a fit from the same initial weights and seed."""
    data = image_set()
    model = fresh_model()
    settings = training(epochs, lr, **regularization)
    objective = CrossEntropy(settings.regularization.label_smoothing)
    trained = fit(model, data, data, objective, settings, Runtime(CPU), seed=0)
    return model, trained.model, trained.metrics


def assert_same_weights(one: nn.Module, other: nn.Module) -> None:
    assert one.state_dict().keys() == other.state_dict().keys()
    for name, tensor in one.state_dict().items():
        assert torch.equal(tensor, other.state_dict()[name]), name


def test_fit_stops_early_when_val_accuracy_plateaus_and_returns_the_best_epochs_weights():
    # A learning rate this small moves the weights but not a single prediction: accuracy is flat.
    early = EarlyStoppingParams(metric="val_accuracy", patience=1)
    model, kept, metrics = trained(epochs=5, lr=1e-6, early_stopping=early)

    assert metrics["epochs"] == 2 < 5  # epoch 2 did not beat epoch 1, and patience is 1
    assert metrics["steps"] == 2
    assert metrics["best_epoch"] == 1
    assert kept is model
    _, after_one_epoch, _ = trained(epochs=1, lr=1e-6)
    _, after_two_epochs, _ = trained(epochs=2, lr=1e-6)
    assert_same_weights(kept, after_one_epoch)
    assert not torch.equal(kept[1].weight, after_two_epochs[1].weight)
    # The metrics returned are those of the weights returned.
    assert metrics["val_accuracy"] == pytest.approx(validate(after_one_epoch, image_set())["val_accuracy"], rel=1e-6)
    assert metrics["val_loss"] == pytest.approx(validate(after_one_epoch, image_set())["val_loss"], rel=1e-6)


def test_fit_with_ema_returns_the_moving_average_of_the_weights():
    decay_rate = 0.9
    model, kept, metrics = trained(epochs=2, ema_decay=decay_rate)
    _, first, _ = trained(epochs=1)
    _, second, _ = trained(epochs=2)

    assert kept is model  # holding the average, put into it at the end
    # The first update copies the weights; the second averages: 0.9 * w1 + 0.1 * w2, where w1 and w2 are the
    # weights of runs without EMA: averaging does not change how the weights train.
    for name, tensor in kept.state_dict().items():
        expected = decay_rate * first.state_dict()[name] + (1 - decay_rate) * second.state_dict()[name]
        assert torch.allclose(tensor, expected, rtol=0, atol=1e-6), name
    assert not torch.equal(kept[1].weight, second[1].weight)
    assert metrics["val_loss"] == pytest.approx(validate(kept, image_set())["val_loss"], rel=1e-6)
