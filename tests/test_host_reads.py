"""A training step never waits on the device: nothing in it reads a value back to the host (`.item()`, a tensor
in an `if`, a boolean mask, `nonzero`), so a GPU is never left idle while the host waits for it. On the CPU,
each such read is seen as the op it dispatches, and a run's count must not grow with its steps: the reads
there are are those of each epoch's end (its loss means, the divergence check, validation). On a CUDA device,
torch's sync debug mode turns any synchronizing call in the steps into an error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipelines.config.data import MixParams, TransformParams
from pipelines.config.distributed import DistributedParams
from pipelines.config.optim import SGDParams
from pipelines.config.schedules import CosineSchedule
from pipelines.config.speed import SpeedParams
from pipelines.config.training import GradClipParams, ModelParams, RegularizationParams, TrainingParams, TrainParams
from pipelines.core.paths import Paths
from pipelines.data.images import ImageSet
from pipelines.engine.batches import BatchSource
from pipelines.engine.checkpoint import save_checkpoint
from pipelines.engine.loop import fit
from pipelines.engine.objective import CrossEntropy, Objective
from pipelines.engine.optim import build_optimizer
from pipelines.engine.runtime import Runtime
from pipelines.engine.strategies import build_strategy
from pipelines.engine.views import fresh_views
from pipelines.kd.base import Context, Distillation
from pipelines.kd.crd import CRD
from pipelines.kd.fitnet import FitNet
from pipelines.kd.kd import KD
from pipelines.kd.teacher import Teacher
from pipelines.models import ModelConfig, build_model

CPU = Runtime(torch.device("cpu"))
# The ops that make the host wait for the device's result.
HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
              torch.ops.aten.masked_select.default, torch.ops.aten.equal.default, torch.ops.aten.is_nonzero.default}
VIEWS = TransformParams(rotation_degrees=12.0, translate=0.1, pad_crop=1,
                        mix=MixParams(mixup_alpha=1.0, cutmix_alpha=1.0))


def config(width: int, depth: int) -> ModelConfig:
    return ModelConfig(arch="cnn", width=width, depth=depth, blocks_per_stage=1, dropout=0.0, in_channels=1,
                       image_size=(8, 8), num_classes=4, pixel_mean=(0.5,), pixel_std=(0.3,))


class HostReads(TorchDispatchMode):
    """Counts the ops that read a tensor's value back to the host (a boolean mask's index among them)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        masks = func in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default) and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in args[1] if index is not None)
        self.count += func in HOST_READS or masks
        return func(*args, **(kwargs or {}))


def images(count: int = 64) -> ImageSet:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, 1, 8, 8), dtype=torch.uint8, generator=generator)
    return ImageSet(pixels, torch.arange(count) % 4, ["a", "b", "c", "d"])


def training(batch_size: int, views: TransformParams | None = None) -> TrainingParams:
    # SGD: torch's Adam reads its step count back on the CPU (a host tensor there, on the device when fused)
    return TrainingParams(model=ModelParams(width=2, depth=1, dropout=0.0),
                          train=TrainParams(epochs=2, batch_size=batch_size),
                          optimizer=SGDParams(name="sgd", lr=0.05, momentum=0.9),
                          schedule=CosineSchedule(name="cosine"),
                          regularization=RegularizationParams(weight_decay=0.01, weight_decay_mode="decoupled",
                                                              ema_decay=0.9, l1=1e-5,
                                                              grad_clip=GradClipParams(by="norm", max=1.0)),
                          views=views)


def teacher_context(root: Path, run_live: bool) -> Context:
    torch.manual_seed(1)
    paths = Paths(root)
    save_checkpoint(paths.model("teacher"), build_model(config(4, 2)).state_dict(), config(4, 2), {})
    return Context(paths, 0.0, Teacher(paths.model("teacher"), paths.teacher_features("s"), run_live=run_live),
                   key="distill.s.losses.0")


OBJECTIVES: dict[str, tuple[Callable[[Path], Objective], TransformParams | None]] = {
    "labels alone": (lambda root: CrossEntropy(), None),
    "kd on stored logits": (lambda root: Distillation([("kd", 1.0, KD(torch.randn(64, 4), temperature=4.0))]), None),
    "kd from a live teacher on mixed fresh views": (
        lambda root: Distillation([("kd", 1.0, KD(teacher_context(root, run_live=True).teacher, temperature=1.0))]),
        VIEWS),
    "fitnet and crd on the teacher's features": (
        lambda root: Distillation([
            ("fitnet", 1.0, FitNet.create(FitNet.Options(), context := teacher_context(root, run_live=False))),
            ("crd", 0.8, CRD.create(CRD.Options(feature_dim=6, negatives=5), context))]), None),
}


def host_reads(objective: Objective, settings: TrainingParams) -> int:
    torch.manual_seed(0)
    with HostReads() as reads:
        fit(build_model(config(2, 1)), images(), images(16), objective, settings, CPU, seed=0)
    return reads.count


@pytest.mark.parametrize("name", OBJECTIVES)
def test_the_host_reads_of_a_run_do_not_grow_with_its_steps(name: str, tmp_path: Path) -> None:
    make, views = OBJECTIVES[name]
    few = host_reads(make(tmp_path / "few"), training(batch_size=32, views=views))  # 2 steps an epoch
    many = host_reads(make(tmp_path / "many"), training(batch_size=8, views=views))  # 8 steps an epoch
    assert few == many


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_steps_on_cuda_make_no_synchronizing_call(tmp_path: Path) -> None:
    # The loop's step, as pipelines/engine/loop.py takes it, under torch's sync debug mode: any call that waits on
    # the device raises. The first step runs before it (allocations, cuDNN's autotuner).
    cuda = Runtime(torch.device("cuda"), speed=SpeedParams(compile=False))
    make, views = OBJECTIVES["kd from a live teacher on mixed fresh views"]
    settings, train, model = training(batch_size=8, views=views), images(), build_model(config(2, 1))
    strategy = build_strategy(cuda, DistributedParams())
    layout = strategy.prepare(model, make(tmp_path), train, 8)
    optimizer = build_optimizer(layout.trained, settings.optimizer, settings.regularization, "auto")
    source = BatchSource(train, cuda)
    batch_of = fresh_views(source, train, views, 0, cuda).of_epoch(0)
    rows = torch.randperm(len(train)).to(source.rows_device)
    losses = []
    for start in range(0, len(train), 8):
        torch.cuda.set_sync_debug_mode("error" if start else 0)
        try:
            optimizer.zero_grad(set_to_none=True)
            losses += [loss for _, loss, _ in strategy.backward(rows[start : start + 8], batch_of)]
            strategy.clip_gradients(settings.regularization.grad_clip)
            optimizer.step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(torch.stack(losses)).all()
