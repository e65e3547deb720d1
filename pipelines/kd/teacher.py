"""Where a student's feature-based terms (fitnet, at, rkd, crd) get the teacher's features: stored once by
the `teacher_features` stage, or computed by the teacher run live beside the student.

The transfer set is fixed (the `augment` stage writes it), so the teacher's features of every image can be
computed once, like its logits: `write_teacher_features` runs the teacher over the transfer set and stores
each requested layer's features as a float32 .npy, memory-mapped, in data/teacher_features/<student>/ (a
DVC output), when they fit in `teacher_features.max_cache_gb`. Otherwise it stores only its manifest, with
the reason, and the student runs the teacher live, one forward per batch for all its terms. Both the stage
and the student say in their logs which it is and why.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines.core.atomic import atomic_path
from pipelines.core.errors import DataError, first_line
from pipelines.data.images import ImageSet
from pipelines.data.logits import check_finite
from pipelines.engine.capture import Capture, LiveModel
from pipelines.engine.checkpoint import load_model
from pipelines.engine.objective import Batch
from pipelines.engine.rows import RowTable, row_tables_of
from pipelines.kd.view_cache import CachedViews

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
Layer = tuple[str, bool]  # a teacher module path, and whether the term reads what enters it (else its output)


def layer_name(layer: Layer) -> str:
    path, of_inputs = layer
    return f"{path}.{'input' if of_inputs else 'output'}"


@torch.no_grad()
def write_teacher_features(folder: Path, teacher_path: Path, transfer: ImageSet, layers: list[Layer],
                           max_bytes: float, device: torch.device, batch_size: int = 512) -> dict:
    """Store the teacher's features of `layers` for every transfer image in `folder` (replaced atomically)
    if they fit in `max_bytes`; always write the manifest saying what was stored and why. Returns it."""
    manifest: dict = {"images": len(transfer), "layers": {}, "cached": False}
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        if not layers:
            manifest["reason"] = "no term of this student reads the teacher's layers"
        else:
            teacher, _ = load_model(teacher_path)
            teacher.to(device)
            captures = capture(teacher, layers)
            probe = transfer.images[:1].to(device).float().div_(255.0)
            teacher(probe)
            shapes = {layer_name(layer): tuple(captures[layer].values[layer[0]].shape[1:]) for layer in layers}
            size = sum(math.prod(shape) for shape in shapes.values()) * 4 * len(transfer)
            if size > max_bytes:
                manifest["reason"] = (f"the features take {size / 2**30:.2f} GiB, more than teacher_features."
                                      f"max_cache_gb ({max_bytes / 2**30:g}): the student runs the teacher live")
            else:
                stored = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.float32,
                                                          shape=(len(transfer), *shape))
                          for name, shape in shapes.items()}
                for start in range(0, len(transfer), batch_size):
                    teacher(transfer.images[start : start + batch_size].to(device).float().div_(255.0))
                    for layer in layers:
                        values = captures[layer].values[layer[0]]
                        stored[layer_name(layer)][start : start + len(values)] = values.float().cpu().numpy()
                for name, array in stored.items():  # a teacher that diverged leaves the stored features in place
                    check_finite(array, f"{teacher_path}'s features of {name}",
                                 "the teacher diverged or was damaged: retrain it with `dvc repro train_teacher`")
                    array.flush()
                del stored  # close the maps before the folder is renamed into place
                manifest.update(cached=True, reason=f"the features take {size / 2**30:.3f} GiB, within "
                                                    f"teacher_features.max_cache_gb ({max_bytes / 2**30:g})")
                manifest["layers"] = {name: {"file": f"{name}.npy", "shape": list(shape)}
                                      for name, shape in shapes.items()}
            for one in captures.values():
                one.remove()
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(path: Path) -> dict | None:
    """The stored features' manifest, None where there is none; DataError if it cannot be read."""
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not {"images", "layers", "cached"} <= manifest.keys():
            raise ValueError("not a manifest of the teacher_features stage")
        return manifest
    except ValueError as error:
        raise DataError(f"{path}: cannot be read ({first_line(error)}): cut short or damaged; get it back with "
                        f"`dvc checkout --force {path.parent}`, or rerun `dvc repro teacher_features`") from None


def open_features(folder: Path, manifest: dict, name: str) -> torch.Tensor:
    """The stored features of layer `name` (memory-mapped), checked against the manifest: DataError naming the
    file and what to rerun when it cannot be read, has another shape, or holds a value that is not finite."""
    path = folder / manifest["layers"][name]["file"]
    expected = [manifest["images"], *manifest["layers"][name]["shape"]]
    rerun = f"rerun `dvc repro teacher_features` (or `dvc checkout --force {folder}`)"
    try:
        stored = np.load(path, mmap_mode="c")
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{path}: not readable teacher features ({first_line(error)}): cut short or damaged; "
                        f"{rerun}") from None
    if list(stored.shape) != expected:
        raise DataError(f"{path}: teacher features of shape {list(stored.shape)}, its manifest says {expected}; "
                        f"{rerun}")
    check_finite(stored, str(path), rerun)
    return torch.from_numpy(stored)


def capture(model: nn.Module, layers: list[Layer]) -> dict[Layer, Capture]:
    """One hook per layer, on its output or on what enters it."""
    return {layer: Capture(model, [(layer[0], "teacher layer")], inputs=layer[1]) for layer in layers}


class Teacher:
    """The teacher's outputs for a student's terms: its features from the stored arrays where the
    `teacher_features` stage stored them, else from the teacher (models/teacher.pt) run live, frozen, in eval
    mode; with `run_live` (the student's `teacher: live`), its logits and features all from the teacher run on
    each batch, on the view the student sees."""

    def __init__(self, model_path: Path, cache: Path, run_live: bool = False,
                 cached_views: CachedViews | None = None) -> None:
        """`cached_views`: the cache of its logits on the student's fresh views (`teacher: cached`), read instead
        of running it for the logits."""
        self.model_path, self.cache, self.run_live = model_path, cache, run_live
        self.cached_views = cached_views
        self.manifest = read_manifest(cache / MANIFEST)
        self.stored: dict[Layer, RowTable] = {}
        self.live: dict[Layer, Capture] = {}
        self.model: LiveModel | None = None  # loaded with the first layer read live
        self._last: torch.Tensor | None = None

    def attach(self, layers: list[tuple[Layer, str]], device: torch.device, images: int) -> None:
        """Make the features of each (layer, params key naming it) available from `features`, for a training
        set of `images` rows."""
        for layer, key in layers:
            name = layer_name(layer)
            if not self.run_live and self.manifest and self.manifest["cached"] and name in self.manifest["layers"]:
                if self.manifest["images"] != images:
                    raise DataError(f"{self.cache}: teacher features of {self.manifest['images']} images, the "
                                    f"transfer set has {images}: they were stored for other data; rerun "
                                    f"`dvc repro teacher_features`")
                if layer not in self.stored:
                    self.stored[layer] = RowTable(open_features(self.cache, self.manifest, name),
                                                  f"the teacher's stored features of {name}")
                    log.info("teacher features of %s: read from %s (%s)", name, self.cache, self.manifest["reason"])
            elif layer not in self.live:
                module = self._load(device)
                self.live[layer] = Capture(module, [(layer[0], key)], inputs=layer[1])
                why = ("teacher: live" if self.run_live else self.manifest["reason"] if self.manifest
                       else f"no {self.cache / MANIFEST}")
                log.info("teacher features of %s: the teacher runs live beside the student (%s)", name, why)

    def _load(self, device: torch.device) -> nn.Module:
        """The teacher's module, loaded (frozen, on `device`) the first time it is asked for."""
        if self.model is None:
            teacher, _ = load_model(self.model_path)
            self.model = LiveModel(teacher.to(device).requires_grad_(False))
        return self.model.module

    def setup(self, model: nn.Module, train_set: ImageSet) -> None:
        """Load the teacher to run live beside `model`, for its logits (a logit term's set-up)."""
        self._load(next(model.parameters()).device)

    def logits(self, batch: Batch, device: torch.device) -> torch.Tensor:
        """The live teacher's logits of this batch's images (run once per batch however many terms ask)."""
        self._run(batch)
        assert self.model is not None and self.model.output is not None  # setup loaded it, _run ran it
        return self.model.output.to(device)

    def live_models(self) -> list[LiveModel]:
        return [] if self.model is None else [self.model]

    def _run(self, batch: Batch) -> None:
        if self.model is not None and batch.images is not self._last:
            self.model(batch.images)
            self._last = batch.images

    def features(self, batch: Batch, device: torch.device) -> dict[Layer, torch.Tensor]:
        """The teacher's features of this batch's images, for every attached layer; the live teacher runs
        once per batch whatever the number of terms that ask."""
        self._run(batch)
        found = {layer: capture.values[layer[0]] for layer, capture in self.live.items()}
        return found | {layer: stored.rows(batch.rows, device) for layer, stored in self.stored.items()}

    def row_tables(self) -> list[RowTable]:
        """The stored features read by the batch's rows, and the cache of views (`KeepsRows`)."""
        return [*self.stored.values(), *row_tables_of(self.cached_views)]

    def detach(self) -> None:
        for one in self.live.values():
            one.remove()
        self.live = {}
