"""Prefect tasks of the methods study: one per (dataset, seed) run (its own process), then the summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.dvc_stages import run_logged


@task(name="kd_study_run", task_run_name="kd study {dataset} seed {seed}", cache_policy=NO_CACHE)
def run_kd_study(project_dir: Path, dataset: str, seed: int, threads: int | None = None) -> list[dict]:
    """The teacher, the baseline and every study loss on one dataset with one seed, in a fresh process (on
    `threads` CPU threads; torch's default: every core)."""
    run_logged([sys.executable, "-m", "pipelines.kd_study", "run", dataset, str(seed)], project_dir,
               f"kd study {dataset} seed {seed}", {"OMP_NUM_THREADS": str(threads)} if threads else None)
    return json.loads((project_dir / "kd_study" / "runs" / f"{dataset}-{seed}.json").read_text())


@task(name="kd_study_summary", cache_policy=NO_CACHE)
def summarize_kd_study(project_dir: Path) -> str:
    """Write the table and the plot; post the table as Prefect artifacts."""
    run_logged([sys.executable, "-m", "pipelines.kd_study", "summarize"], project_dir, "kd study summary")
    study = project_dir / "kd_study"
    table = (study / "results.md").read_text()
    create_table_artifact(json.loads((study / "results.json").read_text()), key="kd-methods-study",
                          description="One row per dataset and model")
    create_markdown_artifact(table + f"\nPlot: {study / 'gains.png'}", key="kd-methods-study-report",
                             description="The distillation methods study's table")
    return table
