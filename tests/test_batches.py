"""Where a step's batch comes from when the training data stays on the host: a background thread gathers the
rows the next step reads while this one trains (`speed.prefetch`), and the batch is the one gathered at the
step itself, so a run trains to the same weights with or without it."""

from __future__ import annotations

import threading
from dataclasses import replace

import torch

from pipelines.config.distributed import DistributedParams
from pipelines.config.optim import SGDParams
from pipelines.config.schedules import CosineSchedule
from pipelines.config.training import ModelParams, RegularizationParams, TrainingParams, TrainParams
from pipelines.data.images import ImageSet
from pipelines.engine.batches import BatchSource
from pipelines.engine.loop import fit
from pipelines.engine.objective import Batch, CrossEntropy
from pipelines.engine.runtime import Runtime
from pipelines.engine.strategies import build_strategy
from pipelines.models import ModelConfig, build_model

CPU = Runtime(torch.device("cpu"))  # every speed path off, as init_runtime leaves them on a CPU
PREFETCHING = replace(CPU, speed=CPU.speed.model_copy(update={"prefetch": True}))


def images(count: int = 60) -> ImageSet:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, 1, 8, 8), dtype=torch.uint8, generator=generator)
    mix = {"mix_label": torch.arange(count).flip(0) % 4, "mix_weight": torch.rand(count, generator=generator)}
    return ImageSet(pixels, torch.arange(count) % 4, ["a", "b", "c", "d"], mix)


def same_batch(first: Batch, second: Batch) -> bool:
    return all(torch.equal(getattr(first, name), getattr(second, name))
               for name in ("images", "labels", "rows", "mix_labels", "mix_weights"))


class WatchedSource(BatchSource):
    """A batch source that notes the threads its rows are gathered on."""

    gatherers: set[str] = set()

    def _gather(self, rows: torch.Tensor) -> list[torch.Tensor]:
        self.gatherers.add(threading.current_thread().name)
        return super()._gather(rows)


def test_the_batch_gathered_ahead_in_a_thread_is_the_batch_gathered_at_the_step() -> None:
    train = images()
    prefetching, plain = WatchedSource(train, PREFETCHING), BatchSource(train, CPU)
    rows = torch.randperm(len(train))
    prefetching.ahead([rows[:16], rows[16:32]])
    assert same_batch(prefetching(rows[:16]), plain(rows[:16]))
    assert same_batch(prefetching(rows[16:32]), plain(rows[16:32]))
    assert prefetching.gatherers and all(name.startswith("batches") for name in prefetching.gatherers)


def test_rows_other_than_those_gathered_ahead_are_gathered_at_the_step() -> None:
    train = images()
    prefetching, plain = BatchSource(train, PREFETCHING), BatchSource(train, CPU)
    prefetching.ahead([torch.arange(8)])
    asked = torch.arange(8, 16)
    assert same_batch(prefetching(asked), plain(asked))
    assert not prefetching.gathering  # the guess that missed is dropped


def test_nothing_is_gathered_ahead_where_prefetch_is_off() -> None:
    source = BatchSource(images(), CPU)
    source.ahead([torch.arange(8)])
    assert not source.prefetching and not source.gathering


def test_a_strategy_names_the_rows_its_step_reads_in_the_order_it_reads_them() -> None:
    strategy = build_strategy(CPU, DistributedParams(grad_accum_steps=3))
    strategy.prepare(build_model(config()), CrossEntropy(), images(), 12)
    asked: list[torch.Tensor] = []
    step_rows = torch.randperm(60)[:12]
    list(strategy.backward(step_rows, lambda rows: asked.append(rows) or BatchSource(images(), CPU)(rows)))
    reads = strategy.reads(step_rows)
    assert len(reads) == len(asked) == 3 and all(torch.equal(a, b) for a, b in zip(reads, asked))


def config() -> ModelConfig:
    return ModelConfig(arch="cnn", width=2, depth=1, blocks_per_stage=1, dropout=0.0, in_channels=1,
                       image_size=(8, 8), num_classes=4, pixel_mean=(0.5,), pixel_std=(0.3,))


def test_a_run_that_prefetches_trains_to_the_same_weights() -> None:
    settings = TrainingParams(model=ModelParams(width=2, depth=1, dropout=0.0),
                              train=TrainParams(epochs=2, batch_size=16),
                              optimizer=SGDParams(name="sgd", lr=0.05, momentum=0.9),
                              schedule=CosineSchedule(name="cosine"),
                              regularization=RegularizationParams(weight_decay=0.01, weight_decay_mode="decoupled"))
    weights = []
    for runtime in (CPU, PREFETCHING):
        torch.manual_seed(0)
        trained = fit(build_model(config()), images(), images(16), CrossEntropy(), settings, runtime, seed=0)
        weights.append(trained.state_dict)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
