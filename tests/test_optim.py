"""Optimizer and learning-rate schedule factories: each params name builds the torch object it promises.

Schedules are driven the way `fit` drives them (after_step after every optimizer step, after_epoch after
every epoch) and the learning rate each step uses is compared with the schedule's closed form.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from tests.conftest import SHIPPED_PARAMS
from pipelines.config import ParamsError, load_params
from pipelines.config.optim import (AdagradParams, AdamParams, AdamWParams, NAdamParams, RAdamParams, RMSpropParams,
                                    SGDParams)
from pipelines.config.schedules import (ConstantSchedule, CosineRestartsSchedule, CosineSchedule, ExponentialSchedule,
                                        MultiStepSchedule, OneCycleSchedule, PlateauSchedule, SequenceSchedule,
                                        StepSchedule)
from pipelines.config.training import ModelParams, RegularizationParams, TrainParams, TrainingParams
from pipelines.data.images import ImageSet
from pipelines.config.optim import OPTIMIZERS
from pipelines.engine.objective import CrossEntropy
from pipelines.engine.optim import build_optimizer
from pipelines.engine.schedules import build_schedule, steps_per_epoch
from pipelines.engine.runtime import Runtime
from pipelines.engine.loop import fit

PARAMS = SHIPPED_PARAMS
NO_DECAY = RegularizationParams(weight_decay=0.0, weight_decay_mode="coupled")
LR = 0.1


def small_net() -> nn.Sequential:
    """Weights (2-d) of two linear layers, and 1-d biases and BatchNorm weight/bias between them."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def weights_and_others(model: nn.Sequential) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    first, norm, last = model
    return [first.weight, last.weight], [first.bias, norm.weight, norm.bias, last.bias]


def ids(parameters) -> list[int]:
    return [id(parameter) for parameter in parameters]


# --- optimizers ------------------------------------------------------------------------------------

# (params, torch class, the group options those params must set)
OPTIMIZER_CASES = [
    (
        SGDParams(name="sgd", lr=0.07, momentum=0.8, nesterov=True),
        torch.optim.SGD,
        {"lr": 0.07, "momentum": 0.8, "nesterov": True, "dampening": 0.0},
    ),
    (
        AdagradParams(name="adagrad", lr=0.02, lr_decay=0.001, initial_accumulator_value=0.1, eps=1e-9),
        torch.optim.Adagrad,
        {"lr": 0.02, "lr_decay": 0.001, "initial_accumulator_value": 0.1, "eps": 1e-9},
    ),
    (
        RMSpropParams(name="rmsprop", lr=0.003, alpha=0.9, eps=1e-7, momentum=0.5, centered=True),
        torch.optim.RMSprop,
        {"lr": 0.003, "alpha": 0.9, "eps": 1e-7, "momentum": 0.5, "centered": True},
    ),
    (
        AdamParams(name="adam", lr=0.003, betas=(0.8, 0.95), eps=1e-6, amsgrad=True),
        torch.optim.Adam,
        {"lr": 0.003, "betas": (0.8, 0.95), "eps": 1e-6, "amsgrad": True},
    ),
    (
        AdamWParams(name="adamw", lr=0.002, betas=(0.85, 0.99), eps=1e-7),
        torch.optim.AdamW,
        {"lr": 0.002, "betas": (0.85, 0.99), "eps": 1e-7, "amsgrad": False},
    ),
    (
        NAdamParams(name="nadam", lr=0.004, betas=(0.9, 0.99), eps=1e-7, momentum_decay=0.005),
        torch.optim.NAdam,
        {"lr": 0.004, "betas": (0.9, 0.99), "eps": 1e-7, "momentum_decay": 0.005},
    ),
    (
        RAdamParams(name="radam", lr=0.001, betas=(0.7, 0.9), eps=1e-5),
        torch.optim.RAdam,
        {"lr": 0.001, "betas": (0.7, 0.9), "eps": 1e-5},
    ),
]
OPTIMIZER_IDS = [case[0].name for case in OPTIMIZER_CASES]


def group_options(group: dict[str, Any], keys) -> dict[str, Any]:
    return {key: tuple(group[key]) if key == "betas" else group[key] for key in keys}


def test_every_optimizer_name_of_the_schema_has_a_torch_class():
    assert set(OPTIMIZERS) == {"sgd", "adagrad", "rmsprop", "adam", "adamw", "nadam", "radam"}
    assert sorted(OPTIMIZER_IDS) == sorted(OPTIMIZERS)


@pytest.mark.parametrize(("params", "torch_class", "options"), OPTIMIZER_CASES, ids=OPTIMIZER_IDS)
def test_optimizer_is_its_torch_class_with_two_groups_decaying_only_the_weights(params, torch_class, options):
    model = small_net()
    # adamw only decays decoupled (the schema refuses coupled decay for it); the others here are coupled.
    mode = "decoupled" if params.name == "adamw" else "coupled"
    optimizer = build_optimizer(model.parameters(), params,
                                RegularizationParams(weight_decay=0.01, weight_decay_mode=mode))

    assert type(optimizer) is torch_class
    decayed, not_decayed = optimizer.param_groups
    weights, others = weights_and_others(model)
    assert ids(decayed["params"]) == ids(weights)
    assert ids(not_decayed["params"]) == ids(others)
    assert (decayed["weight_decay"], not_decayed["weight_decay"]) == (0.01, 0.0)
    for group in (decayed, not_decayed):
        assert group_options(group, options) == options


@pytest.mark.parametrize(("params", "torch_class", "options"), OPTIMIZER_CASES, ids=OPTIMIZER_IDS)
def test_decay_bias_and_norm_puts_every_parameter_in_one_decayed_group(params, torch_class, options):
    model = small_net()
    mode = "decoupled" if params.name == "adamw" else "coupled"
    regularization = RegularizationParams(weight_decay=0.03, weight_decay_mode=mode, decay_bias_and_norm=True)
    optimizer = build_optimizer(model.parameters(), params, regularization)
    [group] = optimizer.param_groups
    assert ids(group["params"]) == ids(model.parameters())
    assert group["weight_decay"] == 0.03
    assert group_options(group, options) == options


def test_a_model_without_biases_or_norms_gets_a_single_group():
    model = nn.Linear(3, 2, bias=False)
    optimizer = build_optimizer(model.parameters(), SGDParams(name="sgd", lr=LR), NO_DECAY)
    assert [ids(group["params"]) for group in optimizer.param_groups] == [[id(model.weight)]]


@pytest.mark.parametrize("name", ["adam", "nadam", "radam"])
def test_decoupled_decay_sets_the_torch_flag_on_adam_nadam_and_radam(name):
    params = {"adam": AdamParams, "nadam": NAdamParams, "radam": RAdamParams}[name](name=name, lr=0.01)
    regularization = RegularizationParams(weight_decay=0.05, weight_decay_mode="decoupled")
    decoupled = build_optimizer(small_net().parameters(), params, regularization)
    assert [group["decoupled_weight_decay"] for group in decoupled.param_groups] == [True, True]
    assert [group["weight_decay"] for group in decoupled.param_groups] == [0.05, 0.0]
    regularization = RegularizationParams(weight_decay=0.05, weight_decay_mode="coupled")
    coupled = build_optimizer(small_net().parameters(), params, regularization)
    assert [group["decoupled_weight_decay"] for group in coupled.param_groups] == [False, False]
    assert [group["weight_decay"] for group in coupled.param_groups] == [0.05, 0.0]


def test_decoupled_decay_on_adamw_is_adamws_own_weight_decay():
    regularization = RegularizationParams(weight_decay=0.05, weight_decay_mode="decoupled")
    optimizer = build_optimizer(small_net().parameters(), AdamWParams(name="adamw", lr=0.01), regularization)
    assert type(optimizer) is torch.optim.AdamW
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.05, 0.0]


@pytest.mark.parametrize(
    "params",
    [SGDParams(name="sgd", lr=LR), AdagradParams(name="adagrad", lr=LR), RMSpropParams(name="rmsprop", lr=LR)],
    ids=["sgd", "adagrad", "rmsprop"],
)
def test_decoupled_decay_without_a_torch_option_turns_off_torchs_coupled_decay(params):
    # torch's own weight_decay (coupled) is 0; the step pre-hook shrinks the weights instead (see
    # test_regularization.py for the arithmetic).
    regularization = RegularizationParams(weight_decay=0.05, weight_decay_mode="decoupled")
    optimizer = build_optimizer(small_net().parameters(), params, regularization)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0, 0]
    assert [group["decoupled_weight_decay"] for group in optimizer.param_groups] == [0.05, 0.0]


# --- optimizer params in params.yaml ---------------------------------------------------------------


def problem_lines(overrides: dict[str, Any]) -> list[str]:
    with pytest.raises(ParamsError) as caught:
        load_params(PARAMS, overrides)
    return [line.strip() for line in str(caught.value).splitlines()[1:]]


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("sgd", "name, lr, momentum, nesterov, dampening"),
        ("adagrad", "name, lr, lr_decay, initial_accumulator_value, eps"),
        ("rmsprop", "name, lr, alpha, eps, momentum, centered"),
        ("adam", "name, lr, betas, eps, amsgrad"),
        ("adamw", "name, lr, betas, eps, amsgrad"),
        ("nadam", "name, lr, betas, eps, momentum_decay"),
        ("radam", "name, lr, betas, eps"),
    ],
)
def test_an_unknown_option_of_an_optimizer_lists_that_optimizers_options(name, allowed):
    # weight_decay is not an optimizer option: it lives in `regularization`.
    [line] = problem_lines({"student.optimizer": {"name": name, "lr": 0.01, "weight_decay": 0.1}})
    assert line == f"student.optimizer: unknown key(s) weight_decay; allowed keys here: {allowed}"


def test_adamw_with_coupled_weight_decay_is_refused_with_the_way_out():
    [line] = problem_lines(
        {"student.optimizer": {"name": "adamw", "lr": 0.01}, "student.regularization.weight_decay": 0.01}
    )
    assert line == (
        "student: adamw decays weights decoupled: use weight_decay_mode: decoupled, or adam for coupled L2"
    )
    # Without any decay there is nothing to couple; decoupled decay is what adamw does.
    for mode, decay in (("coupled", 0.0), ("decoupled", 0.01)):
        params = load_params(
            PARAMS,
            {
                "student.optimizer": {"name": "adamw", "lr": 0.01},
                "student.regularization.weight_decay": decay,
                "student.regularization.weight_decay_mode": mode,
            },
        )
        assert params.student.optimizer.name == "adamw"


# --- learning-rate schedules -----------------------------------------------------------------------


def lr_per_step(
    schedule, epochs: int, steps: int = 1, lr: float = LR, metrics: list[dict] | None = None
) -> list[float]:
    """The learning rate of every optimizer step of a run of `epochs` x `steps`, calling the schedule as fit does."""
    optimizer = build_optimizer(nn.Linear(2, 1).parameters(), SGDParams(name="sgd", lr=lr), NO_DECAY)
    lr_schedule = build_schedule(optimizer, schedule, epochs, steps)
    rates = []
    for epoch in range(epochs):
        for _ in range(steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            lr_schedule.after_step()
        lr_schedule.after_epoch(metrics[epoch] if metrics else {"val_loss": 1.0, "val_accuracy": 0.5})
    return rates


def cosine(t: float, period: float, high: float, low: float) -> float:
    return low + (high - low) * (1 + math.cos(math.pi * t / period)) / 2


def test_constant_schedule_keeps_the_learning_rate():
    assert lr_per_step(ConstantSchedule(name="constant"), epochs=4, steps=3) == pytest.approx([LR] * 12)


def test_step_schedule_multiplies_by_gamma_every_step_size_epochs():
    schedule = StepSchedule(name="step", step_size=2, gamma=0.5)
    # Three steps per epoch, all at the epoch's rate: epochs 0-1 at lr, 2-3 at lr/2, 4 at lr/4.
    expected = [LR * 0.5 ** (epoch // 2) for epoch in range(5) for _ in range(3)]
    assert lr_per_step(schedule, epochs=5, steps=3) == pytest.approx(expected)


def test_step_schedule_with_interval_step_counts_optimizer_steps():
    schedule = StepSchedule(name="step", interval="step", step_size=2, gamma=0.5)
    expected = [LR * 0.5 ** (step // 2) for step in range(9)]  # epoch boundaries (every 3 steps) play no part
    assert lr_per_step(schedule, epochs=3, steps=3) == pytest.approx(expected)


def test_multistep_schedule_multiplies_by_gamma_at_each_milestone():
    schedule = MultiStepSchedule(name="multistep", milestones=[2, 5], gamma=0.1)
    expected = [LR, LR, LR * 0.1, LR * 0.1, LR * 0.1, LR * 0.01, LR * 0.01]
    assert lr_per_step(schedule, epochs=7) == pytest.approx(expected)


def test_exponential_schedule_multiplies_by_gamma_every_interval():
    expected = [LR * 0.8**t for t in range(6)]
    assert lr_per_step(ExponentialSchedule(name="exponential", gamma=0.8), epochs=6) == pytest.approx(expected)
    per_step = ExponentialSchedule(name="exponential", interval="step", gamma=0.8)
    assert lr_per_step(per_step, epochs=2, steps=3) == pytest.approx(expected)


def test_cosine_schedule_anneals_from_lr_to_min_lr_over_the_whole_run():
    min_lr = 0.01
    by_epoch = lr_per_step(CosineSchedule(name="cosine", min_lr=min_lr), epochs=6, steps=2)
    assert by_epoch == pytest.approx([cosine(epoch, 6, LR, min_lr) for epoch in range(6) for _ in range(2)])
    # interval step: the run is 3 epochs x 4 steps = 12 intervals.
    by_step = lr_per_step(CosineSchedule(name="cosine", interval="step", min_lr=min_lr), epochs=3, steps=4)
    assert by_step == pytest.approx([cosine(step, 12, LR, min_lr) for step in range(12)])


def test_cosine_schedule_with_a_period_reaches_min_lr_at_the_period():
    rates = lr_per_step(CosineSchedule(name="cosine", min_lr=0.02, period=4), epochs=10)
    assert rates[:5] == pytest.approx([cosine(t, 4, LR, 0.02) for t in range(5)])
    assert rates[4] == pytest.approx(0.02)


def test_cosine_restarts_restart_at_each_period_and_period_mult_lengthens_the_cycles():
    schedule = CosineRestartsSchedule(name="cosine_restarts", period=2, period_mult=2, min_lr=0.0)
    # Cycles of 2, 4 and 8 intervals starting at t = 0, 2 and 6.
    expected = [cosine(t, 2, LR, 0.0) for t in range(2)]
    expected += [cosine(t, 4, LR, 0.0) for t in range(4)]
    expected += [cosine(t, 8, LR, 0.0) for t in range(8)]
    rates = lr_per_step(schedule, epochs=14)
    assert rates == pytest.approx(expected)
    assert (rates[1], rates[2], rates[5], rates[6]) == pytest.approx((LR / 2, LR, cosine(3, 4, LR, 0.0), LR))


def test_cosine_restarts_with_period_mult_one_repeat_the_same_cycle():
    schedule = CosineRestartsSchedule(name="cosine_restarts", period=3, min_lr=0.01)
    expected = [cosine(t % 3, 3, LR, 0.01) for t in range(9)]
    assert lr_per_step(schedule, epochs=9) == pytest.approx(expected)


def test_onecycle_rises_from_max_lr_over_div_factor_to_max_lr_then_anneals_to_its_floor():
    max_lr, div, final_div = 0.5, 10.0, 100.0
    schedule = OneCycleSchedule(
        name="onecycle", interval="step", max_lr=max_lr, pct_start=0.3, div_factor=div, final_div_factor=final_div
    )
    rates = lr_per_step(schedule, epochs=2, steps=5)  # 10 steps
    start, floor = max_lr / div, max_lr / (div * final_div)
    # The rise takes the first pct_start * 10 = 3 steps (0, 1, 2), the cosine descent the last 7 (2..9).
    expected = [cosine(2 - t, 2, max_lr, start) for t in range(3)] + [cosine(t, 7, max_lr, floor) for t in range(1, 8)]
    assert rates == pytest.approx(expected)
    assert (rates[0], rates[2], rates[-1]) == pytest.approx((0.05, 0.5, 0.0005))
    assert max(rates) == pytest.approx(max_lr)


def test_onecycle_linear_anneal_defaults_max_lr_to_the_optimizers_lr():
    schedule = OneCycleSchedule(name="onecycle", pct_start=0.5, anneal_strategy="linear", div_factor=4.0,
                                final_div_factor=5.0)
    rates = lr_per_step(schedule, epochs=6)  # interval epoch: 6 intervals, peak at index 2
    start, floor = LR / 4, LR / 20
    expected = [start + (LR - start) * t / 2 for t in range(3)] + [LR + (floor - LR) * t / 3 for t in range(1, 4)]
    assert rates == pytest.approx(expected)


def test_plateau_divides_the_lr_after_patience_plus_one_epochs_without_improvement():
    schedule = PlateauSchedule(name="plateau", metric="val_loss", factor=0.5, patience=2)
    losses = [1.0, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7]
    rates = lr_per_step(schedule, epochs=10, metrics=[{"val_loss": loss} for loss in losses])
    # Epochs 2, 3, 4 do not improve on 0.8: after epoch 4 the lr halves. Epoch 5 improves (0.7), then
    # epochs 6..8 do not: after epoch 8 it halves again.
    assert rates == pytest.approx([LR] * 5 + [LR / 2] * 4 + [LR / 4])


def test_plateau_on_val_accuracy_counts_a_rise_as_improvement():
    schedule = PlateauSchedule(name="plateau", metric="val_accuracy", factor=0.1, patience=0)
    accuracies = [0.5, 0.6, 0.7, 0.7, 0.8]
    rates = lr_per_step(schedule, epochs=5, metrics=[{"val_accuracy": value} for value in accuracies])
    assert rates == pytest.approx([LR, LR, LR, LR, LR * 0.1])


def test_warmup_rises_linearly_from_start_factor_then_the_schedule_runs_over_the_rest():
    schedule = CosineSchedule(name="cosine", interval="step", warmup=4, warmup_start_factor=0.25, min_lr=0.0)
    rates = lr_per_step(schedule, epochs=2, steps=6)  # 12 steps: 4 of warmup, 8 of cosine
    warmup = [LR * (0.25 + 0.75 * t / 4) for t in range(4)]
    assert rates[:4] == pytest.approx(warmup)
    assert rates[0] == pytest.approx(0.25 * LR)
    assert rates[4] == pytest.approx(LR)
    assert rates[4:] == pytest.approx([cosine(t, 8, LR, 0.0) for t in range(8)])


def test_warmup_then_step_schedule_counts_its_steps_from_the_end_of_warmup():
    schedule = StepSchedule(name="step", step_size=2, gamma=0.5, warmup=2, warmup_start_factor=0.5)
    rates = lr_per_step(schedule, epochs=8)
    assert rates == pytest.approx([0.5 * LR, 0.75 * LR, LR, LR, LR / 2, LR / 2, LR / 4, LR / 4])


def test_sequence_runs_each_part_over_its_milestone_span_and_each_part_continues_from_the_last_lr():
    schedule = SequenceSchedule(
        name="sequence",
        schedules=[CosineSchedule(name="cosine", min_lr=0.01), ExponentialSchedule(name="exponential", gamma=0.5)],
        milestones=[4],
    )
    rates = lr_per_step(schedule, epochs=8)
    # The cosine's period defaults to its span, 4 epochs, so it ends at min_lr; the exponential part then
    # decays from there (not from the optimizer's lr, where torch's SequentialLR alone would restart it).
    assert rates[:4] == pytest.approx([cosine(t, 4, LR, 0.01) for t in range(4)])
    assert rates[3] == pytest.approx(0.01 + (LR - 0.01) * (1 - math.sqrt(0.5)) / 2)
    assert rates[4:] == pytest.approx([0.01, 0.01 / 2, 0.01 / 4, 0.01 / 8])


def test_sequence_of_cosine_then_constant_holds_the_cosine_s_final_lr():
    schedule = SequenceSchedule(
        name="sequence", interval="step",
        schedules=[CosineSchedule(name="cosine", min_lr=0.02), ConstantSchedule(name="constant")], milestones=[3],
    )
    rates = lr_per_step(schedule, epochs=2, steps=3)
    assert rates == pytest.approx([LR, cosine(1, 3, LR, 0.02), cosine(2, 3, LR, 0.02), 0.02, 0.02, 0.02])


def test_sequence_with_a_warmup_counts_its_milestones_from_the_end_of_the_warmup():
    schedule = SequenceSchedule(
        name="sequence", warmup=2,
        schedules=[CosineSchedule(name="cosine", min_lr=0.02), ConstantSchedule(name="constant")], milestones=[3],
    )
    rates = lr_per_step(schedule, epochs=8)
    warmup = [0.1 * LR, 0.55 * LR]
    assert rates == pytest.approx(warmup + [cosine(t, 3, LR, 0.02) for t in range(3)] + [0.02] * 3)


@pytest.mark.parametrize(
    "schedule",
    [
        StepSchedule(name="step", interval="step", step_size=1, gamma=0.5),
        ExponentialSchedule(name="exponential", interval="step", gamma=0.5),
        CosineSchedule(name="cosine", interval="step", min_lr=0.0),
    ],
    ids=["step", "exponential", "cosine"],
)
def test_an_interval_step_schedule_moves_on_after_step_and_ignores_after_epoch(schedule):
    optimizer = build_optimizer(nn.Linear(2, 1).parameters(), SGDParams(name="sgd", lr=LR), NO_DECAY)
    lr_schedule = build_schedule(optimizer, schedule, epochs=1, steps_per_epoch=2)  # a cosine over 2 steps
    lr_schedule.after_epoch({"val_loss": 1.0, "val_accuracy": 0.5})
    assert optimizer.param_groups[0]["lr"] == LR
    optimizer.step()
    lr_schedule.after_step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR / 2)


@pytest.mark.parametrize(
    "schedule",
    [
        StepSchedule(name="step", step_size=1, gamma=0.5),
        ExponentialSchedule(name="exponential", gamma=0.5),
        CosineSchedule(name="cosine", min_lr=0.0),
    ],
    ids=["step", "exponential", "cosine"],
)
def test_an_interval_epoch_schedule_moves_on_after_epoch_and_ignores_after_step(schedule):
    optimizer = build_optimizer(nn.Linear(2, 1).parameters(), SGDParams(name="sgd", lr=LR), NO_DECAY)
    lr_schedule = build_schedule(optimizer, schedule, epochs=2, steps_per_epoch=5)  # a cosine over 2 epochs
    for _ in range(5):
        optimizer.step()
        lr_schedule.after_step()
    assert optimizer.param_groups[0]["lr"] == LR
    lr_schedule.after_epoch({"val_loss": 1.0, "val_accuracy": 0.5})
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR / 2)


# --- steps per epoch -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("examples", "batch_size", "world_size", "steps"),
    [
        (12, 4, 1, 3),  # three full batches
        (13, 4, 1, 4),  # a last batch of one image is still a step
        (5, 10, 1, 1),  # a batch larger than the set: one step
        (10, 4, 2, 3),  # last batch of 2: one row for each of the 2 ranks
        (9, 4, 2, 2),  # last batch of 1 cannot give both ranks a row: dropped
        (100, 32, 4, 4),  # last batch of 4: one row per rank
        (99, 32, 4, 3),  # last batch of 3 for 4 ranks: dropped
    ],
)
def test_steps_per_epoch_counts_global_batches_that_give_every_rank_a_row(examples, batch_size, world_size, steps):
    assert steps_per_epoch(examples, batch_size, world_size) == steps


def tiny_image_set(count: int = 10) -> ImageSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 1, 8, 8), dtype=torch.uint8, generator=generator)
    return ImageSet(images, torch.arange(count) % 3, ["a", "b", "c"])


@pytest.mark.parametrize(("batch_size", "steps"), [("full", 1), (4, 3), (10, 1)])
def test_fit_takes_steps_per_epoch_optimizer_steps_and_full_batch_takes_one(batch_size, steps):
    data = tiny_image_set(10)
    training = TrainingParams(
        model=ModelParams(width=1, depth=1, dropout=0.0),
        train=TrainParams(epochs=3, batch_size=batch_size),
        optimizer=SGDParams(name="sgd", lr=LR),
        schedule=ConstantSchedule(name="constant"),
        regularization=NO_DECAY,
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    objective = CrossEntropy(training.regularization.label_smoothing)
    metrics = fit(model, data, data, objective, training, Runtime(torch.device("cpu")), seed=0).metrics
    assert (metrics["epochs"], metrics["steps"]) == (3, 3 * steps)
