"""Publish a built bundle (pipelines.registry.bundle) behind a gate, and move aliases.

The gate: a student is published only if it beats the version `latest` points to on the gate metric (by
more than min_delta), so a scheduled retrain never replaces a better model. Both figures come from the same
test split: the published version's own when its manifest records the same split, else it is downloaded
and scored on this run's test split. The same weights as `latest` are the same version: nothing is sent.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pipelines.config.storage import ALIAS_NAME, GateParams
from pipelines.registry.download import read_alias, read_manifest, read_manifest_and_digest, resolve
from pipelines.registry.manifest import LATEST, MANIFEST, Alias, Layout, Manifest, RegistryError
from pipelines.storage import ObjectStore
from pipelines.storage.objects import Progress

log = logging.getLogger(__name__)

Rescore = Callable[[Manifest], float]  # the published version's gate metric on this run's test split


@dataclass
class Decision:
    name: str
    model: str
    version: str
    action: str  # published | unchanged (already the latest) | kept (the published one is at least as good)
    metric: str
    candidate: float
    published: float | None = None  # the gate metric of the version `latest` pointed to, if any
    published_version: str | None = None
    compared_on: str = ""
    uri: str = ""
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    aliases: list[str] = field(default_factory=list)  # moved to this version

    def summary(self) -> str:
        """One line for the log and the Prefect artifact."""
        before = (f"{self.published:.4f} of {self.published_version} ({self.compared_on})"
                  if self.published is not None else "none published")
        moved = f"; aliases {', '.join(self.aliases)} -> {self.version}" if self.aliases else ""
        return (f"{self.name}: {self.action} {self.version} - {self.metric} {self.candidate:.4f} vs {before}; "
                f"{self.uploaded_files} files, {self.uploaded_bytes} bytes sent{moved}")

    def to_dict(self) -> dict:
        return asdict(self)


def beats(gate: GateParams, candidate: float, published: float) -> bool:
    if gate.higher_is_better:
        return candidate > published + gate.min_delta
    return candidate < published - gate.min_delta


def publish(
    store: ObjectStore,
    layout: Layout,
    folder: Path,
    manifest: Manifest,
    gate: GateParams,
    aliases: list[str],
    rescore: Rescore,
    part_size: int,
    multipart_threshold: int,
    progress: Progress | None = None,
) -> Decision:
    """Gate the bundle in `folder` against `latest`; if it passes, upload what is missing, the manifest
    last, then move `latest` and `aliases` to it."""
    store.check_bucket()
    decision = Decision(manifest.name, manifest.model, manifest.version, "published", gate.metric,
                        manifest.metrics[gate.metric], uri=store.uri(layout.version_key(manifest.version, "")) + "/")
    current = read_alias(store, layout, LATEST)
    if current is not None:
        published = read_manifest(store, layout, current.version, current.manifest_sha256)
        decision.published_version = published.version
        if published.version == manifest.version:
            decision.action, decision.published = "unchanged", published.metrics.get(gate.metric)
            decision.compared_on = "the same weights"
            return decision
        if published.test_split_sha256 == manifest.test_split_sha256 and gate.metric in published.metrics:
            decision.published, decision.compared_on = published.metrics[gate.metric], "the same test split"
        else:
            decision.published = rescore(published)
            decision.compared_on = "this run's test split (the published version re-scored)"
        if not beats(gate, decision.candidate, decision.published):
            decision.action = "kept"
            return decision
    manifest_key = layout.version_key(manifest.version, MANIFEST)
    manifest_bytes = store.get_bytes(manifest_key)  # a version published before stays as it was first published
    if manifest_bytes is None:
        for entry in manifest.objects:  # what an interrupted publish already sent is skipped
            if store.upload_file(layout.version_key(manifest.version, entry.file), folder / entry.file,
                                 entry.sha256, part_size, multipart_threshold, progress):
                decision.uploaded_files += 1
                decision.uploaded_bytes += entry.size
        manifest_bytes = (folder / MANIFEST).read_bytes()
        store.put_bytes(manifest_key, manifest_bytes, "application/json")
        decision.uploaded_files += 1
        decision.uploaded_bytes += len(manifest_bytes)
    for alias in [LATEST, *aliases]:
        move_alias(store, layout, alias, manifest.version, hashlib.sha256(manifest_bytes).hexdigest())
    decision.aliases = [LATEST, *aliases]
    return decision


def move_alias(store: ObjectStore, layout: Layout, alias: str, version: str, manifest_sha256: str) -> None:
    """Point `alias` at `version`: one PUT of a small object, so a reader sees the old target or the new one."""
    moved_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    store.put_bytes(layout.alias_key(alias), Alias(version, manifest_sha256, moved_at).to_json(), "application/json")
    log.info("%s: %s -> %s", layout.name, alias, version)


def promote(store: ObjectStore, layout: Layout, ref: str, alias: str) -> str:
    """Move `alias` (e.g. production) to the version `ref` names (a version or another alias); return it."""
    if not ALIAS_NAME.fullmatch(alias):
        raise RegistryError(f"alias {alias!r}: use lowercase letters, digits, '_' and '-'")
    version, manifest_sha256 = resolve(store, layout, ref)
    _, digest = read_manifest_and_digest(store, layout, version, manifest_sha256)  # exists, unchanged
    move_alias(store, layout, alias, version, digest)
    return version
