"""The README's picture (`make readme-figure`): the HTML report's training-curves figure of the last run, written to
docs/report_training.png.

    dvc repro report                      # the pipeline as `make run` runs it, up to the report
    python -m pipelines.readme_figure     # docs/report_training.png, from that run's training logs

The figure is the one reports/report.html shows first (pipelines/evaluation/figures.py), drawn from the
training stages' dvclive logs of every model of params.yaml, so the picture is what a run gives, never drawn by
hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.config import Params
from pipelines.core.atomic import atomic_path
from pipelines.core.paths import Paths
from pipelines.core.stage import run_stage

FIGURE = Path("docs/report_training.png")


def readme_figure(params: Params, paths: Paths = Paths(), out: Path = FIGURE) -> Path:
    """Draw every model's training curves from its log under `paths` into the PNG `out`; return `out`."""
    from pipelines.evaluation.figures import png, training_curves
    from pipelines.evaluation.html_report import read_training_log

    logs = {name: read_training_log(paths.training_log(name)) for name in params.model_names}
    with atomic_path(out) as tmp:
        tmp.write_bytes(png(training_curves(logs)))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=FIGURE, help=f"the PNG to write (default: {FIGURE})")


if __name__ == "__main__":
    run_stage(readme_figure, add_arguments)
