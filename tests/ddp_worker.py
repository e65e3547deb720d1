"""A training run for the parity tests, the same in one process or under torchrun:

    python tests/ddp_worker.py OUT.pt [grad_accum_steps [strategy]]
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py OUT.pt 1 fsdp

`fit` trains a model without batch norm (so that each process's share of a batch trains exactly as the whole
batch would; torch's SyncBatchNorm needs GPUs) on 512 seeded random 8x8 images, global batch 16: 32 steps.
The main rank saves the trained weights (gathered from the shards under FSDP) to OUT.pt.
"""

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config.distributed import DistributedParams  # noqa: E402
from pipelines.config.optim import SGDParams  # noqa: E402
from pipelines.config.schedules import ConstantSchedule  # noqa: E402
from pipelines.config.training import ModelParams, RegularizationParams, TrainingParams, TrainParams  # noqa: E402
from pipelines.data.images import ImageSet  # noqa: E402
from pipelines.engine.loop import fit  # noqa: E402
from pipelines.engine.objective import CrossEntropy  # noqa: E402
from pipelines.engine.parallel import full_state_dict  # noqa: E402
from pipelines.engine.runtime import init_runtime, shutdown  # noqa: E402

IMAGES, BATCH = 512, 16


def main(out: Path, grad_accum_steps: int, strategy: str) -> None:
    runtime = init_runtime("cpu", timeout_s=60)
    data = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (IMAGES, 1, 8, 8), generator=data, dtype=torch.uint8)
    labels = torch.randint(0, 4, (IMAGES,), generator=data)
    train = ImageSet(images, labels, ["a", "b", "c", "d"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4))
    training = TrainingParams(
        model=ModelParams(width=1, depth=1, dropout=0.0),  # not used: the model is built above
        train=TrainParams(epochs=1, batch_size=BATCH),
        optimizer=SGDParams(name="sgd", lr=0.05, momentum=0.9),
        schedule=ConstantSchedule(name="constant"),
        regularization=RegularizationParams(weight_decay=1e-4, weight_decay_mode="coupled"),
    )
    kept, metrics = fit(model, train, train, CrossEntropy(), training, runtime, seed=0,
                        distributed=DistributedParams(grad_accum_steps=grad_accum_steps, strategy=strategy))
    state = full_state_dict(kept)
    if runtime.is_main:
        torch.save({"state_dict": state, "steps": metrics["steps"]}, out)
    shutdown(runtime)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1, sys.argv[3] if len(sys.argv) > 3 else "ddp")
