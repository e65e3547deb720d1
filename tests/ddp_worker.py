"""A training run for the parity tests, the same in one process or under torchrun:

    python tests/ddp_worker.py OUT.pt [grad_accum_steps [strategy [model [regularization]]]]
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py OUT.pt 1 fsdp
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py OUT.pt 1 pipeline-1f1b cnn
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py OUT.pt 1 fsdp plain all

`fit` trains on 512 seeded random 8x8 images, global batch 16: 32 steps. The `plain` model has no batch norm
(so that each process's share of a batch trains exactly as the whole batch would; torch's SyncBatchNorm needs
GPUs); the `cnn` one is the built-in cnn with batch norm, for the pipeline (`strategy pipeline`, 4 micro-batches),
which sees the same micro-batches as one process accumulating gradients over 4. Regularization `all` trains
up to 3 epochs with what reads the weights besides the optimizer: an EMA, an L1 penalty and early stopping on
the EMA's validation loss with patience 1 (the plain model stops after epoch 2 and keeps epoch 1's weights, the
cnn keeps epoch 2's of 3: either way, weights saved at an earlier epoch are put back).
The main rank saves the trained weights (gathered from the shards or the stages) and the metrics to OUT.pt.
"""

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config.distributed import DistributedParams  # noqa: E402
from pipelines.config.optim import SGDParams  # noqa: E402
from pipelines.config.schedules import ConstantSchedule  # noqa: E402
from pipelines.config.training import (  # noqa: E402
    EarlyStoppingParams, ModelParams, RegularizationParams, TrainingParams, TrainParams,
)
from pipelines.data.images import ImageSet  # noqa: E402
from pipelines.engine.loop import fit  # noqa: E402
from pipelines.engine.objective import CrossEntropy  # noqa: E402
from pipelines.engine.parallel import full_state_dict  # noqa: E402
from pipelines.core.stage import leave_now  # noqa: E402
from pipelines.engine.runtime import init_runtime, shutdown  # noqa: E402
from pipelines.models import ModelConfig, build_model  # noqa: E402

IMAGES, BATCH = 512, 16


REGULARIZATION = {
    "none": {},
    "all": {"ema_decay": 0.9, "l1": 1e-3, "early_stopping": EarlyStoppingParams(metric="val_loss", patience=1)},
}


def main(out: Path, grad_accum_steps: int, strategy: str, model_name: str, regularization: str) -> None:
    runtime = init_runtime("cpu", timeout_s=60)
    data = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (IMAGES, 1, 8, 8), generator=data, dtype=torch.uint8)
    labels = torch.randint(0, 4, (IMAGES,), generator=data)
    train = ImageSet(images, labels, ["a", "b", "c", "d"])
    torch.manual_seed(0)
    if model_name == "plain":
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4))
    else:
        model = build_model(ModelConfig(arch="cnn", width=4, depth=2, blocks_per_stage=1, dropout=0.0, in_channels=1,
                                        image_size=(8, 8), num_classes=4, pixel_mean=(0.5,), pixel_std=(0.3,)))
    training = TrainingParams(
        model=ModelParams(width=1, depth=1, dropout=0.0),  # not used: the model is built above
        train=TrainParams(epochs=1 if regularization == "none" else 3, batch_size=BATCH),
        optimizer=SGDParams(name="sgd", lr=0.05, momentum=0.9),
        schedule=ConstantSchedule(name="constant"),
        regularization=RegularizationParams(weight_decay=1e-4, weight_decay_mode="coupled",
                                            **REGULARIZATION[regularization]),
    )
    kept, metrics = fit(model, train, train, CrossEntropy(), training, runtime, seed=0,
                        distributed=DistributedParams(grad_accum_steps=grad_accum_steps, strategy=strategy.partition("-")[0],
                                                              pipeline_schedule=strategy.partition("-")[2] or "gpipe",
                                                              microbatches=4))
    state = full_state_dict(kept)
    if runtime.is_main:
        torch.save({"state_dict": state, "steps": metrics["steps"], "metrics": metrics}, out)
    shutdown(runtime)
    if runtime.distributed:
        leave_now()  # as the stages' workers do (pipelines/core/stage.py)


if __name__ == "__main__":
    arguments = sys.argv[1:] + ["1", "ddp", "plain", "none"][len(sys.argv) - 2 :]
    main(Path(arguments[0]), int(arguments[1]), arguments[2], arguments[3], arguments[4])
