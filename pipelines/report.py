"""Stage `report`: reports/report.md, the models compared, rendered from metrics/eval.json."""

from __future__ import annotations

import json

from pipelines.config import Params
from pipelines.core.atomic import write_text
from pipelines.core.paths import Paths
from pipelines.core.stage import run_stage
from pipelines.evaluation.report import render_report


def report(params: Params, paths: Paths = Paths()) -> str:
    """Write and return the markdown report."""
    text = render_report(json.loads(paths.eval_metrics.read_text()), params)
    write_text(paths.report, text)
    return text


if __name__ == "__main__":
    run_stage(report)
