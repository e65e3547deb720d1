"""Download a published student, verify it, load it: what a serving system runs (boto3 and torch; no DVC, no git).

    python -m pipelines.fetch student-kd                     # the version `latest` points to
    python -m pipelines.fetch student-kd production --bucket my-models --dest /srv/models
    python -m pipelines.fetch student-kd 3f2a9c0d1e4b5a69    # one version
    python -m pipelines.fetch student-kd --list              # its versions and aliases

Every file is checked against the version's manifest (size and SHA-256) before the folder
<dest>/<name>/<version>/ appears, the exports included (model.pt2, and model.onnx for ONNX Runtime); a
missing, cut short or changed object is refused, naming it, and a manifest that lists anything but plain
file names is refused before anything is written. An export the version was published without is named
with the exporter's reason (the manifest's left_out). Bucket,
prefix and the S3 settings default to params.yaml's `publish` and `storage` sections when the file is there;
credentials and AWS_ENDPOINT_URL come from the environment as boto3 reads them. In Python:
`pipelines.registry.download.fetch_student(store, Layout(prefix, name), ref, dest).model`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.config import PARAMS_FILE
from pipelines.config.storage import PublishParams, StorageParams
from pipelines.core.errors import DataError
from pipelines.core.stage import EXIT_BAD_DATA, params_or_exit
from pipelines.registry.manifest import shown

if TYPE_CHECKING:
    from pipelines.registry.download import Fetched


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the published name, e.g. student-kd")
    parser.add_argument("ref", nargs="?", default="latest", help="a version, or an alias (default: latest)")
    parser.add_argument("--bucket", help="default: params.yaml's publish.bucket")
    parser.add_argument("--prefix", help="default: params.yaml's publish.prefix, else students")
    parser.add_argument("--endpoint-url",
                        help="an S3-compatible server (default: storage.endpoint_url, AWS_ENDPOINT_URL)")
    parser.add_argument("--dest", type=Path, default=Path("fetched"), help="download folder (default: fetched)")
    parser.add_argument("--params", type=Path, help="params file for the defaults (default: params.yaml, if present)")
    parser.add_argument("--list", action="store_true", help="list the published versions and aliases; download nothing")
    args = parser.parse_args(argv)
    storage, publish = StorageParams(), PublishParams()
    if args.params or PARAMS_FILE.exists():
        params = params_or_exit(args.params or PARAMS_FILE)
        storage, publish = params.storage, params.publish
    if args.endpoint_url:
        storage = storage.model_copy(update={"endpoint_url": args.endpoint_url})
    bucket = args.bucket or publish.bucket
    if not bucket:
        parser.error("no bucket: give --bucket (or publish.bucket in params.yaml)")
    try:
        if args.list:
            print(listing(args.name, bucket, args.prefix or publish.prefix, storage))
            return
        fetched = fetch(args.name, args.ref, bucket, args.prefix or publish.prefix, args.dest, storage)
    except DataError as error:
        print(error, file=sys.stderr)
        sys.exit(EXIT_BAD_DATA)
    manifest = fetched.manifest
    metrics = ", ".join(f"{key} {manifest.metrics[key]:.4f}" for key in ("accuracy", "nll") if key in manifest.metrics)
    print(f"{manifest.name} {manifest.version} ({args.ref}): {len(manifest.objects)} files verified in "
          f"{fetched.folder}; test {metrics}; loaded {type(fetched.model).__name__} "
          f"({sum(p.numel() for p in fetched.model.parameters()):,} parameters)")
    for file, why in manifest.left_out.items():
        print(f"published without {shown(file)}: {shown(why)}")


def listing(name: str, bucket: str, prefix: str, storage: StorageParams = StorageParams()) -> str:
    """A published name's versions, oldest first, each with its aliases, test accuracy and date."""
    from pipelines.registry.download import list_published
    from pipelines.registry.manifest import Layout
    from pipelines.storage import ObjectStore, make_client

    layout = Layout(prefix.strip("/"), name)  # a name that is not one is refused before S3 is asked
    store = ObjectStore(make_client(storage), bucket)
    aliases, manifests = list_published(store, layout)
    if not manifests:
        return f"nothing is published as {name!r} under {store.uri(prefix.strip('/'))}/"
    lines = [f"{'version':<16}  {'accuracy':>8}  {'created (UTC)':<29}  aliases"]
    for manifest in manifests:
        names = ", ".join(alias for alias, version in sorted(aliases.items()) if version == manifest.version)
        lines.append(f"{manifest.version}  {manifest.metrics.get('accuracy', float('nan')):>8.4f}  "
                     f"{manifest.created_at:<29}  {names}")
    return "\n".join(lines)


def fetch(name: str, ref: str, bucket: str, prefix: str, dest: Path,
          storage: StorageParams = StorageParams()) -> Fetched:
    """Download, verify and load published `name` at `ref`."""
    from pipelines.registry.download import fetch_student
    from pipelines.registry.manifest import Layout
    from pipelines.storage import ObjectStore, make_client

    layout = Layout(prefix.strip("/"), name)  # a name that is not one is refused before S3 is asked
    return fetch_student(ObjectStore(make_client(storage), bucket), layout, ref, dest)


if __name__ == "__main__":
    main()
