"""The publish stage's decisions as a Prefect artifact and log lines: for each student, whether it was
published, left as it was or kept out by the gate, with both figures the gate compared."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.core.paths import Paths
from pipelines.registry.upload import Decision

COLUMNS = ("name", "action", "version", "metric", "candidate", "published", "published_version", "compared_on",
           "uploaded_files", "uploaded_bytes", "uri")


@task(name="post_publish_decisions", cache_policy=NO_CACHE)
def post_publish_decisions(project_dir: Path) -> dict:
    """Log and post (artifact `publish-decisions`) what the publish stage did; return its record."""
    logger = get_run_logger()
    record = json.loads(Paths(project_dir).publish_record.read_text())
    if not record.get("enabled"):
        logger.info("publishing is off (publish.enabled: false)")
        return record
    rows = []
    for decision in record["students"].values():
        logger.info("%s", Decision(**decision).summary())
        rows.append({column: decision[column] for column in COLUMNS})
    create_table_artifact(rows, key="publish-decisions",
                          description=f"Students published to {record['bucket']}, or kept out by the gate")
    return record
