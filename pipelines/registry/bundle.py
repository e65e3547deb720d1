"""A student's publishable folder: its checkpoint, config, exported program and ONNX model, model card and manifest.

Built locally first (pipelines/publish.py does it under .cache/publish/), so what is uploaded is exactly
what the manifest lists, and nothing is uploaded from a half-built folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipelines.registry.manifest import (CARD, EXPORTED, MANIFEST, MODEL, MODEL_CONFIG, ONNX, Entry, Manifest,
                                         content_version, sha256_file)
from pipelines.registry.onnx_export import export_onnx, exporter_reason

if TYPE_CHECKING:
    import torch

    from pipelines.data.images import MappedImages

log = logging.getLogger(__name__)


def build_bundle(
    model_file: Path,
    folder: Path,
    *,
    name: str,
    model: str,
    metrics: dict[str, float],
    test_split_sha256: str,
    source: dict[str, Any],
    export: bool,
    test_images: torch.Tensor | MappedImages,
    batch_size: int,
    card: Callable[[Manifest], str],
) -> Manifest:
    """Fill `folder` (emptied first) with the files of `model_file` and return their manifest (also written
    there). With `export`, also its torch.export program and its ONNX model, checked against torch on
    `test_images` (uint8 [N, C, H, W]), `batch_size` at a time; one the model cannot be given is logged as a
    warning and named in the manifest's left_out with why. `card` renders the model card from the manifest
    of the other files."""
    from pipelines.engine.checkpoint import load_model

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copyfile(model_file, folder / MODEL)
    network, checkpoint = load_model(folder / MODEL)
    (folder / MODEL_CONFIG).write_text(json.dumps(checkpoint.model_config.to_dict(), indent=2) + "\n")
    left_out: dict[str, str] = {}
    if export:
        config = checkpoint.model_config
        exports = {EXPORTED: export_program(network, config.in_channels, config.image_size, folder / EXPORTED),
                   ONNX: export_onnx(network, test_images, folder / ONNX, batch_size)}
        left_out = {file: why for file, why in exports.items() if why is not None}
    for file, why in left_out.items():
        log.warning("%s: publishing it without %s: %s", name, file, why)
    files = [MODEL, MODEL_CONFIG, *(file for file in (EXPORTED, ONNX) if (folder / file).exists())]
    manifest = Manifest(
        name=name, version=content_version(folder / MODEL), model=model, objects=entries(folder, files),
        metrics=metrics, test_split_sha256=test_split_sha256, source=source,
        created_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"), left_out=left_out,
    )
    (folder / CARD).write_text(card(manifest))
    manifest = replace(manifest, objects=entries(folder, [*files, CARD]))
    (folder / MANIFEST).write_bytes(manifest.to_json())
    return manifest


def entries(folder: Path, files: list[str]) -> list[Entry]:
    return [Entry(file, (folder / file).stat().st_size, sha256_file(folder / file)) for file in files]


def export_program(model: Any, channels: int, image_size: tuple[int, int], path: Path) -> str | None:
    """Save `model` as a torch.export program with a free batch size, which loads with torch alone:
    `torch.export.load(path).module()(images)`. None when saved; else why not: a model torch.export cannot
    trace is published without one."""
    import torch

    example = torch.zeros(2, channels, *image_size)
    try:
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as error:  # noqa: BLE001 - an untraceable model (some timm ones) still publishes its weights
        return f"torch.export could not trace the model: {exporter_reason(error)}"
    torch.export.save(program, path)
    return None


def describe_source(root: Path, stage: str) -> dict[str, Any]:
    """Where a model came from: the git revision (and whether the work tree had changes) and, from dvc.lock,
    the DVC hashes of the inputs and outputs of the stage that trained it."""
    changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"git_revision": _git(root, "rev-parse", "HEAD"), "git_dirty": bool(changes), "dvc_stage": stage,
            **_locked_hashes(root / "dvc.lock", stage)}


def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""  # not a git checkout (an image's copy, a tarball): the card says so


def _locked_hashes(lock_file: Path, stage: str) -> dict[str, dict[str, str]]:
    try:
        locked = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}).get(stage, {})
    except (OSError, yaml.YAMLError):
        return {}
    return {kind: {item["path"]: item.get("md5", "") for item in locked.get(kind, [])} for kind in ("deps", "outs")}
