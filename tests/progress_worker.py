"""A tiny training run whose stderr the progress bar's tests read, in a terminal or not:

    python tests/progress_worker.py LOG_DIR

`fit` trains a small cnn on 256 seeded random 8x8 images for 3 epochs of 16 steps (batch 16), with the log a
stage gives it (dvclive's files in LOG_DIR) and the stage's logging (pipelines/core/stage.py's format)."""

import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config.optim import SGDParams  # noqa: E402
from pipelines.config.schedules import ConstantSchedule  # noqa: E402
from pipelines.config.training import ModelParams, RegularizationParams, TrainingParams, TrainParams  # noqa: E402
from pipelines.data.images import ImageSet  # noqa: E402
from pipelines.engine.loop import fit  # noqa: E402
from pipelines.engine.objective import CrossEntropy  # noqa: E402
from pipelines.engine.runtime import Runtime  # noqa: E402
from pipelines.models import ModelConfig, build_model  # noqa: E402

EPOCHS, STEPS_PER_EPOCH, BATCH = 3, 16, 16


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.manual_seed(0)
    images = torch.randint(0, 256, (STEPS_PER_EPOCH * BATCH, 1, 8, 8), dtype=torch.uint8)
    train = ImageSet(images, torch.arange(len(images)) % 4, ["a", "b", "c", "d"])
    config = ModelConfig(arch="cnn", width=2, depth=1, blocks_per_stage=1, dropout=0.0, in_channels=1,
                         image_size=(8, 8), num_classes=4, pixel_mean=(0.5,), pixel_std=(0.3,))
    training = TrainingParams(model=ModelParams(width=2, depth=1, dropout=0.0),
                              train=TrainParams(epochs=EPOCHS, batch_size=BATCH),
                              optimizer=SGDParams(name="sgd", lr=0.05, momentum=0.9),
                              schedule=ConstantSchedule(name="constant"),
                              regularization=RegularizationParams(weight_decay=0.0, weight_decay_mode="coupled"))
    fit(build_model(config), train, train, CrossEntropy(), training, Runtime(torch.device("cpu")), seed=0,
        log_dir=Path(sys.argv[1]))


if __name__ == "__main__":
    main()
