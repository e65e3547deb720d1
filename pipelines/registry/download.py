"""Find a published student by version or alias, download it, verify every file, load it.

Needs boto3 and torch (and this package's model code), not DVC or git: a serving system runs
`python -m pipelines.fetch <name> [version|alias]`, or calls `fetch_student`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.registry.manifest import (LATEST, MANIFEST, MODEL, VERSION_DIGITS, Alias, Layout, Manifest,
                                         RegistryError, is_alias, is_version, shown)
from pipelines.storage import ObjectStore


@dataclass(frozen=True)
class Fetched:
    folder: Path  # holds every file of the manifest, verified, and manifest.json
    manifest: Manifest
    model: Any = None  # the student in eval mode on the CPU (torch.nn.Module), when loaded


def resolve(store: ObjectStore, layout: Layout, ref: str) -> tuple[str, str | None]:
    """The version `ref` names (a version, or an alias such as latest), and the manifest SHA-256 the alias
    recorded (None for a version named directly)."""
    if is_version(ref):
        return ref, None
    if not is_alias(ref):
        raise RegistryError(f"{shown(ref)}: neither a {VERSION_DIGITS}-digit version nor an alias name (lowercase "
                            f"letters, digits, '_' and '-', e.g. latest)")
    alias = read_alias(store, layout, ref)
    if alias is None:
        aliases = list_aliases(store, layout)
        known = f"its aliases: {', '.join(aliases)}" if aliases else "nothing is published under that name"
        raise RegistryError(f"{store.uri(layout.alias_key(ref))}: no alias {ref!r} of {layout.name!r} ({known}); "
                            f"give an alias or a {VERSION_DIGITS}-digit version")
    return alias.version, alias.manifest_sha256


def read_alias(store: ObjectStore, layout: Layout, alias: str) -> Alias | None:
    """What `alias` points at, or None if the name has no such alias."""
    key = layout.alias_key(alias)
    data = store.get_bytes(key)
    return None if data is None else Alias.from_json(data, store.uri(key))


def list_aliases(store: ObjectStore, layout: Layout) -> list[str]:
    """The aliases of a published name: the keys aliases/<alias>.json with an alias name; any other key
    there (written by hand, or by someone else) is not an alias and is passed over."""
    prefix = layout.alias_key("x")[: -len("x.json")]
    names = (key[len(prefix):].removesuffix(".json") for key in store.list_keys(prefix) if key.endswith(".json"))
    return sorted(name for name in names if is_alias(name))


def list_published(store: ObjectStore, layout: Layout) -> tuple[dict[str, str], list[Manifest]]:
    """The aliases of a published name (alias -> version) and its versions' manifests, oldest first."""
    aliases = {}
    for alias in list_aliases(store, layout):
        if (target := read_alias(store, layout, alias)) is not None:
            aliases[alias] = target.version
    root = layout.version_key("", "") + "/"
    versions = sorted({key[len(root):].split("/")[0] for key in store.list_keys(root) if key.endswith("/" + MANIFEST)})
    manifests = [read_manifest(store, layout, version) for version in versions if is_version(version)]
    return aliases, sorted(manifests, key=lambda manifest: manifest.created_at)


def read_manifest(store: ObjectStore, layout: Layout, version: str, expected_sha256: str | None = None) -> Manifest:
    """The manifest of a published version, checked against the SHA-256 an alias recorded."""
    return read_manifest_and_digest(store, layout, version, expected_sha256)[0]


def read_manifest_and_digest(store: ObjectStore, layout: Layout, version: str,
                             expected_sha256: str | None = None) -> tuple[Manifest, str]:
    """read_manifest, and the SHA-256 of the manifest's bytes (what an alias to the version records)."""
    key = layout.version_key(version, MANIFEST)
    data = store.get_bytes(key)
    if data is None:
        raise RegistryError(f"{store.uri(key)}: no such published version of {layout.name!r}")
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise RegistryError(f"{store.uri(key)}: changed after it was published (its SHA-256 differs from the one "
                            f"its alias recorded): refusing to use it; publish the student again")
    manifest = Manifest.from_json(data, store.uri(key))
    model = manifest.entry(MODEL)
    if manifest.name != layout.name:
        raise RegistryError(f"{store.uri(key)}: describes {manifest.name!r}, not {layout.name!r}: refusing to use it")
    if manifest.version != version or model is None or not model.sha256.startswith(version):
        raise RegistryError(f"{store.uri(key)}: does not describe version {version} (its {MODEL} has another "
                            f"digest): refusing to use it")
    return manifest, digest


def download_version(store: ObjectStore, layout: Layout, ref: str, dest: Path) -> Fetched:
    """Download version or alias `ref` into `dest/<name>/<version>/`, each file checked against the manifest;
    RegistryError naming the first object that is missing, cut short or changed. The folder appears only
    once every file is verified; a manifest that lists anything but plain file names is refused before
    anything is written (Manifest.from_json), so every file lands directly in the version's folder."""
    version, manifest_sha256 = resolve(store, layout, ref)
    manifest = read_manifest(store, layout, version, manifest_sha256)
    target = dest / layout.name / version
    staging = target.with_name(f".{version}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for entry in manifest.objects:
            key = layout.version_key(version, entry.file)
            downloaded = store.download(key, staging / entry.file)
            if downloaded is None:
                raise RegistryError(f"{store.uri(key)}: missing: manifest.json lists it, the bucket does not have it")
            size, sha256 = downloaded
            if size != entry.size:
                raise RegistryError(f"{store.uri(key)}: {size} bytes, manifest.json says {entry.size}: cut short or "
                                    f"changed after publishing; refusing it")
            if sha256 != entry.sha256:
                raise RegistryError(f"{store.uri(key)}: SHA-256 {sha256[:16]}..., manifest.json says "
                                    f"{entry.sha256[:16]}...: changed after publishing; refusing it")
        (staging / MANIFEST).write_bytes(manifest.to_json())
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Fetched(target, manifest)


def fetch_student(store: ObjectStore, layout: Layout, ref: str = LATEST, dest: Path = Path("fetched")) -> Fetched:
    """Download and verify a published student, then load it (eval mode, CPU)."""
    from pipelines.engine.checkpoint import load_model

    fetched = download_version(store, layout, ref, dest)
    model, _ = load_model(fetched.folder / MODEL)
    return Fetched(fetched.folder, fetched.manifest, model)
