"""Stage `publish`: upload the students of params' `publish.students` to S3 for serving systems, each only
if it beats the version published under its name (off unless publish.enabled).

Each student goes to s3://<bucket>/<prefix>/<name>/<version>/ with its model card and manifest, and
`latest` plus publish.aliases move to it (pipelines/registry/). What was decided, with both figures of the
gate, is logged and written to reports/publish.json (the Prefect flow shows it as an artifact).

    python -m pipelines.publish                                      # as params.yaml says
    python -m pipelines.publish --promote student-kd staging production   # move an alias to a published version
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import Params, ParamsError
from pipelines.core.paths import Paths
from pipelines.core.stage import run_stage

if TYPE_CHECKING:
    from pipelines.registry.manifest import Layout
    from pipelines.registry.upload import Decision
    from pipelines.storage import ObjectStore

log = logging.getLogger(__name__)


def publish(params: Params, paths: Paths = Paths(), promote: list[str] | None = None) -> dict[str, Any]:
    """Publish each student of publish.students that passes the gate; write and return the decisions."""
    from pipelines.core.atomic import write_json
    from pipelines.registry.manifest import Layout
    from pipelines.registry.upload import promote as move_alias

    settings = params.publish
    if promote:
        name, ref, alias = promote
        version = move_alias(store_of(params), Layout(settings.prefix, name), ref, alias)
        log.info("%s: %s now points at %s", name, alias, version)
        return {"promoted": {"name": name, "alias": alias, "version": version}}
    record: dict[str, Any] = {"enabled": settings.enabled, "students": {}}
    if not settings.enabled:
        log.info("publishing is off (publish.enabled: false): nothing sent")
        write_json(paths.publish_record, record)
        return record
    store = store_of(params)
    record["bucket"] = store.uri(settings.prefix)
    for model, name in settings.students.items():
        decision = publish_student(params, paths, store, model, name)
        log.info("%s", decision.summary())
        record["students"][model] = decision.to_dict()
    write_json(paths.publish_record, record)
    return record


def publish_student(params: Params, paths: Paths, store: ObjectStore, model: str, name: str) -> Decision:
    """Build `model`'s bundle, then publish it under `name` if it passes the gate."""
    from pipelines.data.images import open_image_set
    from pipelines.registry.bundle import build_bundle, describe_source
    from pipelines.registry.card import render_card
    from pipelines.registry.manifest import Layout
    from pipelines.registry.upload import publish as publish_bundle

    settings = params.publish
    layout = Layout(settings.prefix, name)
    results = json.loads(paths.eval_metrics.read_text())
    dataset = json.loads(paths.card.read_text())
    training = params.student if model == "student_baseline" else params.student_training(model)
    trained_with = training.model_dump(mode="json", exclude_none=True)
    if model in params.distill:
        trained_with["losses"] = [term.model_dump(mode="json") for term in params.distill[model].losses]
    source = describe_source(paths.root, "train_student" if model == "student_baseline" else f"distill@{model}")
    folder = paths.publish_bundle(name)
    manifest = build_bundle(
        paths.model(model), folder, name=name, model=model,
        metrics={key: value for key, value in results[model].items() if isinstance(value, (int, float))},
        test_split_sha256=dataset["splits"]["test"]["sha256"], source=source, export=settings.export,
        test_images=open_image_set(paths.split("test"), paths.arrow_cache).images,
        batch_size=params.evaluate.batch_size,
        card=lambda manifest: render_card(manifest, results, dataset, trained_with, store.bucket, settings.prefix),
    )
    return publish_bundle(
        store, layout, folder, manifest, settings.gate, settings.aliases,
        rescore=lambda published: rescore(params, paths, store, layout, published.version),
        part_size=settings.part_size, multipart_threshold=settings.multipart_threshold, progress=log_progress,
    )


def rescore(params: Params, paths: Paths, store: ObjectStore, layout: Layout, version: str) -> float:
    """The gate metric of a published version on this run's test split (the published figure was measured
    on another one)."""
    import torch

    from pipelines.data.images import open_image_set
    from pipelines.engine.inference import predict_logits
    from pipelines.evaluation.metrics import classification_metrics
    from pipelines.registry.download import fetch_student

    test = open_image_set(paths.split("test"), paths.arrow_cache)
    with tempfile.TemporaryDirectory() as folder:
        published = fetch_student(store, layout, version, Path(folder))
    logits = predict_logits(published.model, test.images, torch.device("cpu"), params.evaluate.batch_size)
    metrics = classification_metrics(logits, test.labels, test.class_names, params.evaluate.calibration_bins)
    return float(metrics[params.publish.gate.metric])


def store_of(params: Params) -> ObjectStore:
    from pipelines.storage import ObjectStore, make_client

    if not params.publish.bucket:
        raise ParamsError("publish.bucket: not set; give the bucket the students are published to")
    return ObjectStore(make_client(params.storage), params.publish.bucket)


def log_progress(key: str, sent: int, size: int) -> None:
    log.info("%s: %.1f of %.1f MiB sent", key, sent / 2**20, size / 2**20)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--promote", nargs=3, metavar=("NAME", "REF", "ALIAS"),
                        help="only move ALIAS of published NAME to REF (a version, or another alias), e.g. "
                             "student-kd staging production")

if __name__ == "__main__":
    run_stage(publish, add_arguments)
