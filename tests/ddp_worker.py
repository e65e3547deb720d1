"""A training run for the parity tests, the same in one process or under torchrun:

    python tests/ddp_worker.py OUT.pt [--accum K] [--batch B] [--strategy S] [--model M] [--regularization R] [--bf16] \
        [--resume DIR [--kill-after-step N]]
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py OUT.pt --strategy fsdp
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py OUT.pt \
        --strategy pipeline-1f1b --model cnn
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py OUT.pt --strategy fsdp \
        --regularization all
    python -m torch.distributed.run --standalone --nproc-per-node 4 tests/ddp_worker.py OUT.pt --strategy hsdp

`fit` trains on 512 seeded random 8x8 images, global batch 16 (or B): 32 steps. The `plain` model has no batch norm
(so that each process's share of a batch trains exactly as the whole batch would; torch's SyncBatchNorm needs
GPUs); the `cnn` one is the built-in cnn with batch norm, for the pipeline (`strategy pipeline`, 4 micro-batches),
which sees the same micro-batches as one process accumulating gradients over 4. Regularization `all` trains
up to 3 epochs with what reads the weights besides the optimizer: an EMA, an L1 penalty and early stopping on
the EMA's validation loss with patience 1 (the plain model stops after epoch 2 and keeps epoch 1's weights, the
cnn keeps epoch 2's of 3: either way, weights saved at an earlier epoch are put back).
With `--resume DIR` the training state is saved into DIR every 7 steps (not by the clock: at the same steps
however fast the run) and resumed from it; with `--kill-after-step N` too, every process SIGKILLs itself once
the save of step N is complete. Strategy `hsdp` is
fsdp with `fsdp_replicas: 2` (two copies of the model, each sharded over half the processes). `--bf16` turns on
bf16 (autocast, and FSDP2's bf16 policy under fsdp), which otherwise applies on CUDA only.
The main rank saves the trained weights (gathered from the shards or the stages), the metrics, and the dtype
each kind of layer's forward saw its weight in, to OUT.pt.
"""

import argparse
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config.resume import ResumeParams  # noqa: E402
from pipelines.config.distributed import DistributedParams  # noqa: E402
from pipelines.config.optim import SGDParams  # noqa: E402
from pipelines.config.schedules import ConstantSchedule  # noqa: E402
from pipelines.config.training import (  # noqa: E402
    EarlyStoppingParams, ModelParams, RegularizationParams, TrainingParams, TrainParams,
)
from pipelines.data.images import ImageSet  # noqa: E402
from pipelines.engine.loop import fit  # noqa: E402
from pipelines.engine.objective import CrossEntropy  # noqa: E402
from pipelines.engine.resume import NoResume, Resume  # noqa: E402
from pipelines.core.stage import leave_now  # noqa: E402
from pipelines.engine.runtime import init_runtime, shutdown  # noqa: E402
from pipelines.models import ModelConfig, build_model  # noqa: E402

IMAGES, BATCH = 512, 16


REGULARIZATION = {
    "none": {},
    "all": {"ema_decay": 0.9, "l1": 1e-3, "early_stopping": EarlyStoppingParams(metric="val_loss", patience=1)},
}


class EverySeventhStep(Resume):
    """Resume's saves after every 7th optimizer step and at each epoch end."""

    def due(self, step: int) -> bool:
        return step % 7 == 0

    def end_of_epoch(self, state, progress, sums, history) -> None:
        self.save(state, progress, sums, history)


class KilledAfter(EverySeventhStep):
    """Those saves, then a SIGKILL of this process once the save of `step` is complete."""

    def __init__(self, *args, step: int) -> None:
        super().__init__(*args)
        self.kill_step = step

    def save(self, state, progress, sums, history) -> None:
        super().save(state, progress, sums, history)
        if progress.step == self.kill_step:
            self.finish()  # written in the background until now
            if self.runtime.distributed:
                dist.barrier()  # and renamed complete by the main rank
            os.kill(os.getpid(), signal.SIGKILL)


def main(arguments: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    runtime = init_runtime("cpu", timeout_s=60)
    if arguments.bf16:  # bf16 applies on CUDA only; on the CPU too here, to run its code paths
        runtime = replace(runtime, speed=runtime.speed.model_copy(update={"bf16": True}))
    data = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (IMAGES, 1, 8, 8), generator=data, dtype=torch.uint8)
    labels = torch.randint(0, 4, (IMAGES,), generator=data)
    train = ImageSet(images, labels, ["a", "b", "c", "d"])
    torch.manual_seed(0)
    if arguments.model == "plain":
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4))
    else:
        model = build_model(ModelConfig(arch="cnn", width=4, depth=2, blocks_per_stage=1, dropout=0.0, in_channels=1,
                                        image_size=(8, 8), num_classes=4, pixel_mean=(0.5,), pixel_std=(0.3,)))
    training = TrainingParams(
        model=ModelParams(width=1, depth=1, dropout=0.0),  # not used: the model is built above
        train=TrainParams(epochs=1 if arguments.regularization == "none" else 3, batch_size=arguments.batch),
        optimizer=SGDParams(name="sgd", lr=0.05, momentum=0.9),
        schedule=ConstantSchedule(name="constant"),
        regularization=RegularizationParams(weight_decay=1e-4, weight_decay_mode="coupled",
                                            **REGULARIZATION[arguments.regularization]),
    )
    forward_dtypes: dict[str, set[str]] = {}  # the dtype of each kind of layer's weight as its forward sees it
    for layer in model.modules():
        if isinstance(getattr(layer, "weight", None), torch.Tensor):
            layer.register_forward_pre_hook(lambda layer, _: forward_dtypes.setdefault(
                type(layer).__name__.removeprefix("FSDP"), set()).add(str(layer.weight.dtype).removeprefix("torch.")))
    resume: Resume | NoResume = NoResume()
    if arguments.resume is not None:
        saving = (arguments.resume, ResumeParams(), runtime, "ddp_worker")
        resume = (KilledAfter(*saving, step=arguments.kill_after_step) if arguments.kill_after_step
                  else EverySeventhStep(*saving))
    strategy, _, schedule = arguments.strategy.partition("-")
    replicas = 2 if strategy == "hsdp" else 1
    trained = fit(model, train, train, CrossEntropy(), training, runtime, seed=0,
                  distributed=DistributedParams(grad_accum_steps=arguments.accum,
                                                strategy="fsdp" if strategy == "hsdp" else strategy,
                                                fsdp_replicas=replicas, pipeline_schedule=schedule or "gpipe",
                                                microbatches=4),
                  resume=resume)
    if runtime.is_main:
        torch.save({"state_dict": trained.state_dict, "steps": trained.metrics["steps"], "metrics": trained.metrics,
                    "forward_dtypes": {kind: sorted(dtypes) for kind, dtypes in forward_dtypes.items()}}, arguments.out)
    shutdown(runtime)
    if runtime.distributed:
        leave_now()  # as the stages' workers do (pipelines/core/stage.py)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--accum", type=int, default=1, help="distributed.grad_accum_steps")
    parser.add_argument("--batch", type=int, default=BATCH, help="train.batch_size, the global batch")
    parser.add_argument("--strategy", default="ddp", help="ddp, fsdp, hsdp, pipeline or pipeline-1f1b")
    parser.add_argument("--model", choices=["plain", "cnn"], default="plain")
    parser.add_argument("--regularization", choices=list(REGULARIZATION), default="none")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (and FSDP2's bf16 policy) on the CPU")
    parser.add_argument("--resume", type=Path, help="a folder for the training state, saved every 7 steps")
    parser.add_argument("--kill-after-step", type=int, help="SIGKILL every process once this step's save is done")
    main(parser.parse_args())
