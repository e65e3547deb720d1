"""Prefect tasks of the optimization study: one per setting (its own process), then the summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.core.paths import Paths
from tasks.dvc_stages import run_logged


@task(name="study_setting", task_run_name="study {setting}", cache_policy=NO_CACHE)
def run_study_setting(project_dir: Path, setting: str) -> dict:
    """Train one setting in a fresh process (so its wall time and peak memory are its own); return its row."""
    run_logged([sys.executable, "-m", "pipelines.study", "run", setting], project_dir, f"study setting {setting}")
    return json.loads(Paths(project_dir).study_result(setting).read_text())


@task(name="study_summary", cache_policy=NO_CACHE)
def summarize_study(project_dir: Path, settings: list[str]) -> str:
    """Write the table, the convergence plot and the DVC plots; post the table as Prefect artifacts."""
    run_logged([sys.executable, "-m", "pipelines.study", "summarize", *settings], project_dir, "study summary")
    study = Paths(project_dir).study
    table = (study / "results.md").read_text()
    rows = [row for row in json.loads((study / "results.json").read_text()) if row["setting"] in settings]
    create_table_artifact(rows, key="optimization-study", description="One row per study setting")
    create_markdown_artifact(
        table + f"\nConvergence plot: {study / 'convergence.png'}", key="optimization-study-report",
        description="The optimization study's table",
    )
    return table
