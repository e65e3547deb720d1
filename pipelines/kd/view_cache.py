"""A cache of the teacher's logits on a student's fresh views (TinyViT's way, `teacher: cached`): the
`teacher_views` stage runs the teacher once over every epoch's views of every transfer image and stores its
`top_k` largest logits of each, so that the student (and any rerun of it) replays the same views without running
the teacher. The views are keyed by (seed, epoch, image) (pipelines/engine/views.py), so the student's epoch
regenerates exactly the views that were labelled: the cache is by (epoch, row), never by image alone, whose
augmentation would then be ignored.

data/teacher_views/<student>/ holds `values.npy` [epochs, images, k] (float32), `classes.npy` (int16, their
classes) and `manifest.json` (the seed, the views, the epochs, the images, k). With k below the number of
classes, the other classes' logits are read as the smallest kept one less log(classes), an approximation
that keeps the kept classes' order and mass; with every class kept (the default) the logits are exact.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipelines.config.base import ParamsError
from pipelines.config.data import TransformParams
from pipelines.core.atomic import atomic_path
from pipelines.core.errors import DataError, first_line
from pipelines.data.images import ImageSet
from pipelines.engine.capture import LiveModel
from pipelines.engine.checkpoint import load_model
from pipelines.engine.batches import BatchSource
from pipelines.engine.rows import RowTable
from pipelines.engine.objective import Batch
from pipelines.engine.runtime import Runtime
from pipelines.engine.views import FreshViews

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def view_key(seed: int, views: TransformParams | None, epochs: int, images: int) -> dict[str, Any]:
    """What the cached logits are of: a student whose key differs would read another view's labels."""
    return {"seed": seed, "views": views.model_dump(mode="json") if views else None, "epochs": epochs,
            "images": images}


@torch.no_grad()
def write_view_cache(folder: Path, teacher_path: Path, transfer: ImageSet, key: dict[str, Any], views: TransformParams,
                     top_k: int | None, max_bytes: float, runtime: Runtime, batch_size: int = 512) -> dict:
    """Store the teacher's logits on every epoch's views of every transfer image in `folder` (replaced
    atomically); ParamsError before anything is written when they would take more than `max_bytes`."""
    classes = len(transfer.class_names)
    k = min(top_k or classes, classes)
    size = key["epochs"] * len(transfer) * k * (4 + 2)
    if size > max_bytes:
        raise ParamsError(f"teacher_views: the teacher's logits on {key['epochs']} epochs of views of "
                          f"{len(transfer):,} images take {size / 2**30:.2f} GiB, more than "
                          f"teacher_views.max_cache_gb ({max_bytes / 2**30:g}); raise it, set teacher_views.top_k "
                          f"below {k}, or run the teacher live (teacher: live)")
    teacher, _ = load_model(teacher_path)
    teacher.to(runtime.device).eval()
    fresh = FreshViews(BatchSource(transfer, runtime), transfer, views, key["seed"], torch.contiguous_format)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        values = np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=np.float32,
                                           shape=(key["epochs"], len(transfer), k))
        indices = np.lib.format.open_memmap(tmp / "classes.npy", mode="w+", dtype=np.int16,
                                            shape=(key["epochs"], len(transfer), k))
        for epoch in range(key["epochs"]):
            views_of = fresh.of_epoch(epoch)
            for start in range(0, len(transfer), batch_size):
                rows = torch.arange(start, min(start + batch_size, len(transfer)))
                with runtime.autocast():
                    logits = teacher(views_of(rows).images).float()
                if not torch.isfinite(logits).all():
                    raise DataError(f"{teacher_path}: the teacher's logits on epoch {epoch + 1}'s views are not all "
                                    f"finite: it diverged or was damaged; retrain it with `dvc repro train_teacher`")
                top = logits.topk(k, dim=1)
                values[epoch, start : start + len(rows)] = top.values.cpu().numpy()
                indices[epoch, start : start + len(rows)] = top.indices.cpu().numpy()
        values.flush()
        indices.flush()
        del values, indices  # close the maps before the folder is renamed into place
        manifest = {**key, "classes": classes, "top_k": k, "bytes": size}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("the teacher's logits on %d epochs of views of %d images: %.3f GiB in %s", key["epochs"],
             len(transfer), size / 2**30, folder)
    return manifest


def write_no_cache(folder: Path, reason: str) -> dict:
    """The stage's output for a student that reads no cache: a manifest saying why."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / MANIFEST).write_text(json.dumps({"cached": False, "reason": reason}, indent=2) + "\n")
    return {"cached": False, "reason": reason}


class CachedViews:
    """The teacher's logits of each batch read from the cache: by the batch's epoch and rows."""

    def __init__(self, folder: Path, seed: int, views: TransformParams | None, epochs: int) -> None:
        self.folder, self.seed, self.views, self.epochs = folder, seed, views, epochs
        self.values: RowTable | None = None  # [epochs, images, k]: the top-k logits ...
        self.classes: RowTable | None = None  # ... and their classes

    def setup(self, model: nn.Module, train_set: ImageSet) -> None:
        """Open the cache, checked against this run's seed, views, epochs and transfer set."""
        self.key = view_key(self.seed, self.views, self.epochs, len(train_set))
        rerun = f"rerun `dvc repro teacher_views` (or `dvc checkout --force {self.folder}`)"
        try:
            manifest = json.loads((self.folder / MANIFEST).read_text())
            values = np.load(self.folder / "values.npy", mmap_mode="c")
            classes = np.load(self.folder / "classes.npy", mmap_mode="c")
        except (OSError, ValueError, EOFError) as error:
            raise DataError(f"{self.folder}: no readable cache of the teacher's logits on views ({first_line(error)});"
                            f" {rerun}") from None
        cached = {key: manifest.get(key) for key in self.key}
        if cached != self.key:
            changed = ", ".join(key for key in self.key if cached[key] != self.key[key])
            raise DataError(f"{self.folder}: the cached logits are of other views ({changed} changed since); {rerun}")
        self.num_classes = len(train_set.class_names)
        # memory-mapped, as the stored teacher features are: a batch reads its own rows of its epoch
        self.values = RowTable(torch.from_numpy(values), "the cached teacher logits on views")
        self.classes = RowTable(torch.from_numpy(classes), "their classes")

    def logits(self, batch: Batch, device: torch.device) -> torch.Tensor:
        assert self.values is not None and self.classes is not None  # setup opened them
        values = self.values.rows(batch.rows, device, batch.epoch)
        classes = self.classes.rows(batch.rows, device, batch.epoch).long()
        rest = values.min(dim=1, keepdim=True).values - math.log(self.num_classes)
        return rest.expand(len(values), self.num_classes).clone().scatter_(1, classes, values)

    def live_models(self) -> list[LiveModel]:
        return []

    def row_tables(self) -> list[RowTable]:
        return [] if self.values is None or self.classes is None else [self.values, self.classes]
