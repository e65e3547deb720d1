"""What a published student is on S3: its keys, its manifest and its aliases.

    s3://<bucket>/<prefix>/<name>/<version>/model.pt          state dict, model config, training metrics
                                           /model_config.json  the config alone, readable without torch
                                           /model.pt2          torch.export program (publish.export)
                                           /card.md            the model card
                                           /manifest.json      every object above: size and SHA-256
    s3://<bucket>/<prefix>/<name>/aliases/<alias>.json         {"version": ..., "manifest_sha256": ...}

The version is the first 16 hex digits of model.pt's SHA-256: the same weights are the same version. The
manifest is uploaded last, so a version exists once its manifest does; an alias names the manifest's own
SHA-256, so a fetch through an alias detects a manifest changed after it was published.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.core.errors import DataError

MANIFEST = "manifest.json"
MODEL = "model.pt"
MODEL_CONFIG = "model_config.json"
EXPORTED = "model.pt2"
CARD = "card.md"
LATEST = "latest"
VERSION_DIGITS = 16
FORMAT = 1  # of manifest.json; a reader refuses a newer one


class RegistryError(DataError):
    """A published student that cannot be found, or whose objects do not match its manifest."""


@dataclass(frozen=True)
class Layout:
    """The keys of one published name under a prefix."""

    prefix: str
    name: str

    def version_key(self, version: str, file: str) -> str:
        return "/".join(part for part in (self.prefix, self.name, version, file) if part)

    def alias_key(self, alias: str) -> str:
        return "/".join(part for part in (self.prefix, self.name, "aliases", f"{alias}.json") if part)


@dataclass(frozen=True)
class Entry:
    file: str  # beside manifest.json, in the version's folder
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    name: str  # the published name
    version: str
    model: str  # the pipeline's name for it (params' distill key, or student_baseline)
    objects: list[Entry]
    metrics: dict[str, float]  # its test metrics (metrics/eval.json)
    test_split_sha256: str  # of the test split those metrics were measured on (the dataset card's)
    source: dict[str, Any] = field(default_factory=dict)  # git revision, DVC hashes of its inputs, params
    created_at: str = ""
    format: int = FORMAT

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            raw = json.loads(data)
            if raw.get("format", 0) > FORMAT:
                raise RegistryError(f"{where}: manifest format {raw['format']} is newer than this code reads "
                                    f"({FORMAT}): update the pipeline")
            raw["objects"] = [Entry(**entry) for entry in raw["objects"]]
            return cls(**raw)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise RegistryError(f"{where}: not a manifest of a published student ({error})") from None

    def entry(self, file: str) -> Entry | None:
        return next((entry for entry in self.objects if entry.file == file), None)


@dataclass(frozen=True)
class Alias:
    version: str
    manifest_sha256: str
    moved_at: str = ""

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Alias:
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError) as error:
            raise RegistryError(f"{where}: not an alias of a published student ({error})") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_version(model_file: Path) -> str:
    """The version of a model file: derived from its bytes, so the same weights always get the same one."""
    return sha256_file(model_file)[:VERSION_DIGITS]


def is_version(ref: str) -> bool:
    return len(ref) == VERSION_DIGITS and all(char in "0123456789abcdef" for char in ref)
