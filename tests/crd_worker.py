"""A crd student trained under ddp, for tests/test_crd_processes.py:

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/crd_worker.py OUT.pt [--broadcast-banks]

`fit` trains a small cnn student (with batch norm) for 2 epochs of 96 seeded random 8x8 images, global batch 16,
under crd (against a random cnn teacher run live) and cross-entropy. With `--broadcast-banks`, DDP is given no
buffers to leave out, so it broadcasts crd's memory banks from rank 0 before every forward, as it did before
the objective named them (`buffers_in_step`). The main rank saves the trained weights, what the objective
learned (heads and banks) and whether every rank ended with the same banks, to OUT.pt.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config.distributed import DistributedParams  # noqa: E402
from pipelines.config.optim import SGDParams  # noqa: E402
from pipelines.config.schedules import ConstantSchedule  # noqa: E402
from pipelines.config.training import ModelParams, RegularizationParams, TrainingParams, TrainParams  # noqa: E402
from pipelines.core.paths import Paths  # noqa: E402
from pipelines.core.stage import leave_now  # noqa: E402
from pipelines.data.images import ImageSet  # noqa: E402
from pipelines.engine.checkpoint import save_checkpoint  # noqa: E402
from pipelines.engine.loop import fit  # noqa: E402
from pipelines.engine.runtime import init_runtime, shutdown  # noqa: E402
from pipelines.kd.base import Context, Distillation  # noqa: E402
from pipelines.kd.ce import CE  # noqa: E402
from pipelines.kd.crd import CRD  # noqa: E402
from pipelines.kd.teacher import Teacher  # noqa: E402
from pipelines.models import ModelConfig, build_model  # noqa: E402

IMAGES, BATCH = 96, 16


def cnn(width: int, depth: int) -> ModelConfig:
    return ModelConfig(arch="cnn", width=width, depth=depth, blocks_per_stage=1, dropout=0.0, in_channels=1,
                       image_size=(8, 8), num_classes=4, pixel_mean=(0.5,), pixel_std=(0.3,))


def main(arguments: argparse.Namespace) -> None:
    runtime = init_runtime("cpu", timeout_s=60)
    data = torch.Generator().manual_seed(1)
    train = ImageSet(torch.randint(0, 256, (IMAGES, 1, 8, 8), generator=data, dtype=torch.uint8),
                     torch.randint(0, 4, (IMAGES,), generator=data), ["a", "b", "c", "d"])
    if arguments.broadcast_banks:  # DDP as before: every buffer broadcast
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model = staticmethod(  # type: ignore[method-assign]
            lambda module, names: None)
    with tempfile.TemporaryDirectory() as folder:
        paths = Paths(Path(folder))
        torch.manual_seed(2)
        save_checkpoint(paths.model("teacher"), build_model(cnn(4, 2)).state_dict(), cnn(4, 2), {})
        context = Context(paths, 0.0, Teacher(paths.model("teacher"), paths.teacher_features("s")))
        crd = CRD.create(CRD.Options(feature_dim=8, negatives=20), context)
        objective = Distillation([("crd", 0.8, crd), ("ce", 1.0, CE.create(CE.Options(), context))])
        torch.manual_seed(0)
        training = TrainingParams(model=ModelParams(width=1, depth=1, dropout=0.0),  # not used: built below
                                  train=TrainParams(epochs=2, batch_size=BATCH),
                                  optimizer=SGDParams(name="sgd", lr=0.05, momentum=0.9),
                                  schedule=ConstantSchedule(name="constant"),
                                  regularization=RegularizationParams(weight_decay=0.0, weight_decay_mode="coupled"))
        trained = fit(build_model(cnn(2, 1)), train, train, objective, training, runtime, seed=0,
                      distributed=DistributedParams(strategy="ddp"))
    banks = torch.cat([crd.student_bank, crd.teacher_bank])
    every = [torch.empty_like(banks) for _ in range(runtime.world_size)]
    dist.all_gather(every, banks)
    if runtime.is_main:
        torch.save({"state_dict": trained.state_dict, "objective": trained.objective_state_dict,
                    "same_banks": all(torch.equal(banks, other) for other in every)}, arguments.out)
    shutdown(runtime)
    leave_now()  # as the stages' workers do (pipelines/core/stage.py)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--broadcast-banks", action="store_true", help="DDP broadcasts crd's banks, as before")
    main(parser.parse_args())
