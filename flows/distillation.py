"""The distillation flow: every DVC stage of dvc.yaml as its own Prefect task, in DAG order, then the report's
artifacts. One `dvc status` up front decides: a stage that changed, or one downstream of it, runs through
`dvc repro --single-item`; the others are up to date and their tasks end at once (state Skipped) without a
process, so a rerun with nothing to do costs little more than Prefect itself.

    python -m flows.distillation                                  # the pipeline as params.yaml says
    python -m flows.distillation --set teacher.train.epochs=5 --set distill.student_kd.losses.0.temperature=2

The stages and their status are read after the overrides are written, so a student added to params.yaml's
`distill` section (stage distill@<name>) runs too, and so does every stage an override changes.

Overrides are validated with the whole file, the distillation methods' options included, before they are
written. Without overrides the flow checks the file's keys and values and leaves the methods' options, whose
schemas import torch, to the first stage, check_params, which checks the whole file whenever it changed: a
rerun with nothing to do loads no torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow

from pipelines.config import PARAMS_FILE, ParamsError, load_params
from pipelines.config.loader import load_yaml
from pipelines.core.paths import Paths
from pipelines.core.stage import EXIT_BAD_PARAMS, params_or_exit
from tasks.environment import quiet_offline
from tasks.dvc_stages import dvc_stage_task, stage_plan, up_to_date_task
from tasks.publish import post_publish_decisions
from tasks.report import post_evaluation


@flow(name="distillation")
def distillation(overrides: dict[str, Any] | None = None, project_dir: str = ".") -> dict[str, dict]:
    """Validate and write the overrides, reproduce each DVC stage that is not up to date (publish included:
    off unless publish.enabled), then post the publish stage's decisions and the evaluation as Prefect
    artifacts."""
    root = Path(project_dir).resolve()
    if overrides:
        from tasks.params import override_params  # (imports torch: the methods' options live beside their code)

        override_params(root, overrides)
    else:
        load_params(root / PARAMS_FILE)  # a bad file is named here, before DVC reads it
    for stage, changed in stage_plan(root).items():  # after the overrides: params.yaml as the stages read it
        if changed:
            dvc_stage_task(stage)(root)
        else:
            up_to_date_task(stage)()
    post_publish_decisions(root)
    return post_evaluation(root)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key.path=value` strings -> {key.path: value}, each value read as YAML (5 -> int, [1, 2] -> list) the
    way params.yaml is read: bad YAML, or a mapping giving a key twice, is a ParamsError."""
    overrides = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ParamsError(f"override {item!r}: expected key.path=value, e.g. teacher.train.epochs=5")
        overrides[key.strip()] = load_yaml(value, f"override {item!r}")
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params.yaml value (repeatable); written into params.yaml")
    parser.add_argument("--project-dir", default=".", help="folder holding dvc.yaml and params.yaml")
    args = parser.parse_args()
    try:
        overrides = parse_overrides(args.overrides)
    except ParamsError as error:
        parser.error(str(error))
    # Fail fast on bad params, before a Prefect server starts: every key and value, and with overrides the
    # distillation methods' options too (as the flow validates them again before writing them).
    params_file = Path(args.project_dir) / PARAMS_FILE
    try:
        params = params_or_exit(params_file, overrides)
        if overrides:
            from pipelines.kd import check_students

            check_students(params)
    except ParamsError as error:
        print(error, file=sys.stderr)
        sys.exit(EXIT_BAD_PARAMS)
    try:
        with quiet_offline():
            distillation(overrides=overrides, project_dir=args.project_dir)
    except Exception as error:  # the flow's log already holds the traceback; end with the cause alone
        print(f"\nflow failed: {error}", file=sys.stderr)
        sys.exit(1)
    paths = Paths(Path(args.project_dir))
    print("\n" + paths.report.read_text())
    print(f"Artifacts: data/ (splits, transfer set, teacher logits), models/ (the teacher and each student), "
          f"metrics/eval.json, {paths.report}, {paths.report_html} (with its figures: open it in a browser); "
          f"Prefect artifacts distillation-report, distillation-report-html and model-comparison. "
          f"Versioned by DVC: see `dvc status`, `dvc metrics show`, `dvc plots show`.")


if __name__ == "__main__":
    main()
