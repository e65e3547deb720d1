"""The baseline student's training as a plain PyTorch script: no params schema, no training log files, no pipeline
modules; the same model, data order, optimizer and schedule as `python -m pipelines.train_student` with the
shipped params, so both write the same weights. benchmarks/stage_overhead.py times the two side by side.

    python benchmarks/plain_student.py ROOT OUT.pt    # ROOT holds data/transfer and data/prepared
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

SEED, EPOCHS, BATCH, LR, WIDTH, DEPTH = 0, 60, 128, 0.01, 8, 2  # the shipped student section (views off)


def load(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    table = pq.read_table(path, columns=["image", "label"])
    shape = json.loads(table.schema.metadata[b"image_shape"])
    pixels = np.asarray(table.column("image").combine_chunks().flatten()).reshape(len(table), *shape)
    return torch.from_numpy(pixels.copy()), torch.from_numpy(table.column("label").to_numpy().copy())


class Student(nn.Module):
    """Input normalization, DEPTH blocks of two 3x3 conv-BN-ReLU (2x2 max-pooling between), global pooling, linear."""

    def __init__(self, channels: int, classes: int, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).clamp_min(1e-6).view(1, -1, 1, 1))
        layers: list[nn.Module] = []
        for block in range(DEPTH):
            out = WIDTH * 2**block
            for _ in range(2):
                layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                channels = out
            if block < DEPTH - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.0)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features((pixels - self.mean) / self.std)).flatten(1)
        return self.classifier(self.dropout(x))


def main(root: Path, out: Path) -> None:
    card = json.loads((root / "data" / "prepared" / "card.json").read_text())
    images, labels = load(root / "data" / "transfer" / "transfer.parquet")
    val_images, val_labels = load(root / "data" / "prepared" / "val.parquet")
    torch.manual_seed(SEED)
    model = Student(card["image_shape"][0], card["num_classes"], card["pixel_mean"], card["pixel_std"])
    weights = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.Adam([{"params": weights, "weight_decay": 0.0}, {"params": others, "weight_decay": 0.0}],
                                 lr=LR)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
    order = torch.Generator().manual_seed(SEED)
    started = time.perf_counter()
    for epoch in range(EPOCHS):
        model.train()
        permutation = torch.randperm(len(images), generator=order)
        for start in range(0, len(images), BATCH):
            rows = permutation[start : start + BATCH]
            loss = F.cross_entropy(model(images[rows].float().div_(255.0)), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(val_images.float().div_(255.0)).argmax(1) == val_labels).float().mean().item()
        print(f"epoch {epoch + 1} val_accuracy {accuracy:.4f}")
    print(f"train_seconds {time.perf_counter() - started}")  # the epochs alone, as the stage's training log times them
    torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
