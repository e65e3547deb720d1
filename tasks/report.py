"""Post the evaluation as Prefect artifacts: the markdown report, a link to the HTML one (its figures inline: too
large for an artifact, so the artifact points at the file), and the table of every model's metrics."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.core.paths import Paths

# Scalar metrics shown in the table artifact, in this order.
TABLE_COLUMNS = (
    "accuracy", "macro_f1", "nll", "ece", "agreement_with_teacher", "params", "near_zero_weights", "checkpoint_bytes",
)


@task(name="post_evaluation", cache_policy=NO_CACHE)
def post_evaluation(project_dir: Path) -> dict[str, dict]:
    """Create the `distillation-report`, `distillation-report-html` and `model-comparison` artifacts; return
    eval.json's content."""
    paths = Paths(project_dir)
    results = json.loads(paths.eval_metrics.read_text())
    create_markdown_artifact(
        markdown=paths.report.read_text(),
        key="distillation-report",
        description="Teacher vs. students on the test split",
    )
    create_link_artifact(
        link=paths.report_html.resolve().as_uri(),
        link_text=str(paths.report_html),
        key="distillation-report-html",
        description="The report with its figures: one self-contained HTML file on the machine that ran the flow",
    )
    rows = []
    for name, metrics in results.items():
        latency = {key: round(value, 4) for key, value in metrics.items() if key.startswith("latency_ms")}
        rows.append({"model": name, **{key: metrics[key] for key in TABLE_COLUMNS}, **latency})
    create_table_artifact(rows, key="model-comparison", description="Test metrics of each model (metrics/eval.json)")
    return results
