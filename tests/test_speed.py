"""The GPU speed paths (params' `speed` section) apply on CUDA only, and the GPU check script that measures
them says so on a machine without CUDA; a compiled run (forced on the CPU) makes no new graph after its first
epoch."""

from __future__ import annotations

import sys

import pytest
import torch

from pipelines.config.speed import SpeedParams
from pipelines.engine.runtime import init_runtime
from tests.conftest import PROJECT_ROOT, run

ALL_ON = SpeedParams(bf16=True, tf32=True, cudnn_benchmark=True, compile=True, optimizer_implementation="fused",
                     channels_last=True, pin_memory=True, data_on_device=True)


def test_every_speed_path_is_off_on_the_cpu_whatever_params_say() -> None:
    runtime = init_runtime("cpu", speed=ALL_ON)
    assert not any(runtime.speed.model_dump(
        include=set(SpeedParams.model_fields) - {"data_on_device_max_share", "compile_mode",
                                                  "optimizer_implementation"}).values())
    assert runtime.speed.optimizer_implementation == "for_loop"  # what torch.optim does on the CPU by default
    with runtime.autocast():
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the check itself")
def test_the_gpu_check_says_it_needs_a_cuda_device_and_exits_2() -> None:
    result = run([sys.executable, "-m", "benchmarks.gpu_check"], PROJECT_ROOT, check=False)
    assert result.returncode == 2
    assert "no CUDA device is visible: this check needs one" in result.stderr


def compiled_run(epochs: int) -> int:
    """The graphs torch.compile made for a distilled student trained `epochs` epochs, compiled on the CPU: 30
    images in batches of 8 (a partial last batch), a validation split of 13."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from pipelines.config.optim import SGDParams
    from pipelines.config.schedules import ConstantSchedule
    from pipelines.config.training import ModelParams, RegularizationParams, TrainingParams, TrainParams
    from pipelines.data.images import ImageSet
    from pipelines.engine.loop import fit
    from pipelines.engine.runtime import Runtime
    from pipelines.kd.base import Distillation
    from pipelines.kd.ce import CE
    from pipelines.kd.kd import KD
    from pipelines.models import ModelConfig, build_model

    torch._dynamo.reset()
    counters.clear()
    speed = SpeedParams(bf16=False, tf32=False, cudnn_benchmark=False, compile=True,
                        optimizer_implementation="for_loop", channels_last=False, pin_memory=False,
                        data_on_device=False)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (43, 1, 8, 8), dtype=torch.uint8, generator=generator)
    train, val = (ImageSet(pixels[rows], torch.arange(43)[rows] % 4, ["a", "b", "c", "d"])
                  for rows in (slice(0, 30), slice(30, 43)))
    config = ModelConfig(arch="cnn", width=2, depth=1, blocks_per_stage=1, dropout=0.0, in_channels=1,
                         image_size=(8, 8), num_classes=4, pixel_mean=(0.5,), pixel_std=(0.3,))
    objective = Distillation([("kd", 0.9, KD(torch.randn(30, 4, generator=generator), temperature=4.0)),
                              ("ce", 0.1, CE(0.0))])
    settings = TrainingParams(model=ModelParams(width=2, depth=1, dropout=0.0),
                              train=TrainParams(epochs=epochs, batch_size=8),
                              optimizer=SGDParams(name="sgd", lr=0.05, momentum=0.9),
                              schedule=ConstantSchedule(name="constant"),
                              regularization=RegularizationParams(weight_decay=0.0, weight_decay_mode="coupled"))
    torch.manual_seed(0)
    trained = fit(build_model(config), train, val, objective, settings, Runtime(torch.device("cpu"), speed=speed), 0)
    assert trained.metrics["steps"] == 3 * epochs  # the partial last batch of each epoch is left out
    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_a_compiled_run_makes_no_new_graph_after_its_first_epoch() -> None:
    # The first epoch compiles the training step and validation's forward; later epochs, whatever their last
    # batch or the validation split's size, reuse them.
    assert compiled_run(epochs=1) == compiled_run(epochs=3)
