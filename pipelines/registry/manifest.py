"""What a published student is on S3: its keys, its manifest and its aliases.

    s3://<bucket>/<prefix>/<name>/<version>/model.pt          state dict, model config, training metrics
                                           /model_config.json  the config alone, readable without torch
                                           /model.pt2          torch.export program (publish.export)
                                           /model.onnx         ONNX model, checked with ONNX Runtime (publish.export)
                                           /card.md            the model card
                                           /manifest.json      every object above: size and SHA-256
    s3://<bucket>/<prefix>/<name>/aliases/<alias>.json         {"version": ..., "manifest_sha256": ...}

The version is the first 16 hex digits of model.pt's SHA-256: the same weights are the same version. The
manifest is uploaded last, so a version exists once its manifest does; an alias names the manifest's own
SHA-256, so a fetch through an alias detects a manifest changed after it was published. An export the
model could not be given (a model torch.export or torch.onnx refuses, or whose ONNX file does not match it;
pipelines/registry/onnx_export.py) is not a file of the version: `left_out` names it with the reason.

Whatever is read from the bucket is checked before it is used, since anyone who can write there could
write it: a manifest lists plain file names only (no folder, no path; `is_file_name`), each once, with a
size and a SHA-256, so a fetch writes nothing outside the version's folder; names, versions and aliases
have one form each, so the local folder <dest>/<name>/<version> is always one level per part.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config.storage import ALIAS_NAME, PUBLISHED_NAME
from pipelines.core.errors import DataError

MANIFEST = "manifest.json"
MODEL = "model.pt"
MODEL_CONFIG = "model_config.json"
EXPORTED = "model.pt2"
ONNX = "model.onnx"
CARD = "card.md"
LATEST = "latest"
VERSION_DIGITS = 16
FORMAT = 2  # of manifest.json; a reader refuses a newer one. 2: left_out (a reader of 1 refuses unknown keys)
# A file a manifest may list: one plain name (what the publisher writes: model.pt, card.md, ...).
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FILE_NAME_RULE = "letters, digits, '.', '_' and '-', not starting with '.'; no folder, no path"
SHA256 = re.compile(r"[0-9a-f]{64}")


class RegistryError(DataError):
    """A published student that cannot be found, or whose objects do not match its manifest."""


@dataclass(frozen=True)
class Layout:
    """The keys of one published name under a prefix."""

    prefix: str
    name: str

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and PUBLISHED_NAME.fullmatch(self.name)):
            raise RegistryError(f"published name {shown(self.name)}: use lowercase letters, digits, '.', '_' and '-' "
                                f"(starting with a letter or digit)")

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
    left_out: dict[str, str] = field(default_factory=dict)  # an export the version lacks -> why (the exporter's reason)
    format: int = FORMAT

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        """The manifest in `data` (read from `where`), every field checked (`problems`), so that nothing is
        downloaded for a manifest that lists a path instead of a file name."""
        try:
            raw = json.loads(data)
            if raw.get("format", 0) > FORMAT:
                raise RegistryError(f"{where}: manifest format {raw['format']} is newer than this code reads "
                                    f"({FORMAT}): update the pipeline")
            raw["objects"] = [Entry(**entry) for entry in raw["objects"]]
            manifest = cls(**raw)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:
            raise RegistryError(f"{where}: not a manifest of a published student ({error})") from None
        if problems := manifest.problems():
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise RegistryError(f"{where}: {'; '.join(problems[:5])}{more}: refusing the version (nothing was "
                                f"downloaded)")
        return manifest

    def problems(self) -> list[str]:
        """What makes this manifest unusable: a field of the wrong type or form, a file entry that is not a
        plain file name (`is_file_name`), listed twice (file systems that ignore case included)."""
        texts = {"model": self.model, "test_split_sha256": self.test_split_sha256, "created_at": self.created_at}
        problems = [f"{key} is not a string" for key, value in texts.items() if not isinstance(value, str)]
        if not (isinstance(self.name, str) and PUBLISHED_NAME.fullmatch(self.name)):
            problems.append(f"name {shown(self.name)} is not a published name")
        if not is_version(self.version):
            problems.append(f"version {shown(self.version)} is not {VERSION_DIGITS} hex digits")
        if not isinstance(self.metrics, dict) or not all(
                isinstance(value, (int, float)) for value in self.metrics.values()):
            problems.append("metrics is not a mapping of names to numbers")
        if not isinstance(self.source, dict):
            problems.append("source is not a mapping")
        if not isinstance(self.left_out, dict) or not all(
                isinstance(file, str) and isinstance(why, str) for file, why in self.left_out.items()):
            problems.append("left_out is not a mapping of file names to reasons")
        seen: set[str] = set()
        for entry in self.objects:
            if not is_file_name(entry.file):
                problems.append(f"it lists {shown(entry.file)}, which is not a file name of a version "
                                f"({FILE_NAME_RULE})")
                continue
            if entry.file.casefold() in seen:
                problems.append(f"it lists {entry.file!r} twice")
            seen.add(entry.file.casefold())
            if isinstance(entry.size, bool) or not isinstance(entry.size, int) or entry.size < 0:
                problems.append(f"{entry.file}: size {shown(entry.size)} is not a number of bytes")
            if not (isinstance(entry.sha256, str) and SHA256.fullmatch(entry.sha256)):
                problems.append(f"{entry.file}: {shown(entry.sha256)} is not a SHA-256 (64 hex digits)")
        return problems

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
            alias = cls(**json.loads(data))
        except (ValueError, TypeError, RecursionError) as error:
            raise RegistryError(f"{where}: not an alias of a published student ({error})") from None
        if not is_version(alias.version) or not (isinstance(alias.manifest_sha256, str)
                                                 and SHA256.fullmatch(alias.manifest_sha256)):
            raise RegistryError(f"{where}: not an alias of a published student (version {shown(alias.version)}, "
                                f"manifest_sha256 {shown(alias.manifest_sha256)}: expected {VERSION_DIGITS} and 64 "
                                f"hex digits)")
        return alias


def shown(value: object) -> str:
    """A value read from the bucket, as a message shows it: quoted, control characters escaped (repr), and
    cut short past 160 characters."""
    text = repr(value)
    return text if len(text) <= 160 else f"{text[:150]}...{text[-7:]}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_version(model_file: Path) -> str:
    """The version of a model file: derived from its bytes, so the same weights always get the same one."""
    return sha256_file(model_file)[:VERSION_DIGITS]


def is_version(ref: object) -> bool:
    return isinstance(ref, str) and len(ref) == VERSION_DIGITS and all(char in "0123456789abcdef" for char in ref)


def is_alias(ref: object) -> bool:
    return isinstance(ref, str) and ALIAS_NAME.fullmatch(ref) is not None


def is_file_name(name: object) -> bool:
    """Whether a manifest may list `name`: one plain file name (FILE_NAME), not manifest.json itself. Never a
    path (no '/', '\\', '..', leading '.', NUL or other control character), so <folder>/<name> is a file
    directly in <folder>, whatever the file system."""
    return isinstance(name, str) and FILE_NAME.fullmatch(name) is not None and name.casefold() != MANIFEST
