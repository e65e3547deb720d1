"""Stage `report`: reports/report.md, the models compared, rendered from metrics/eval.json; and
reports/report.html, the same with the figures, drawn from eval.json, the training logs and the dataset card."""

from __future__ import annotations

import json

from pipelines.config import Params
from pipelines.core.atomic import write_text
from pipelines.core.paths import Paths
from pipelines.core.stage import run_stage
from pipelines.evaluation.report import render_report


def report(params: Params, paths: Paths = Paths()) -> str:
    """Write the markdown and the HTML report; return the markdown one."""
    from pipelines.evaluation.html_report import read_inputs, render_html

    text = render_report(json.loads(paths.eval_metrics.read_text()), params)
    write_text(paths.report, text)
    write_text(paths.report_html, render_html(*read_inputs(paths, params), params))
    return text


if __name__ == "__main__":
    run_stage(report)
