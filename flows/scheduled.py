"""The pipeline as a deployment runs it on a worker, from nothing: the deployment's pull steps (prefect.yaml)
have cloned the repository at its revision and installed what requirements.lock says; this flow pulls the
stages' inputs from the DVC remote, runs the distillation flow, pushes the outputs, and records the run
(dvc.lock and metrics as artifacts, the run as a DVC experiment or a branch on the git remote).

    make deploy                      # register the deployments of prefect.yaml (docs/scheduling.md)
    prefect deployment run scheduled-distillation/pipeline --params '{"overrides": {"teacher.train.epochs": 5}}'

It runs anywhere a clone with a DVC remote is: `python -m flows.scheduled --record none` in a checkout.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.distillation import distillation, parse_overrides
from pipelines.config import ParamsError
from tasks.environment import quiet_offline
from tasks.versioning import RecordError, default_remote, parse_record, pull_inputs, push_outputs, record_run


@flow(name="scheduled-distillation")
def scheduled_distillation(overrides: dict[str, Any] | None = None, record: str = "experiment",
                           project_dir: str = ".") -> dict[str, Any]:
    """Pull the inputs, run the pipeline with `overrides`, push the outputs, record the run as `record` says
    (`experiment`, `branch:<name>` or `none`); return the evaluation and where the run was recorded."""
    root = Path(project_dir).resolve()
    parse_record(record)  # a bad value fails before anything runs
    pull_inputs(root)  # and so does a project without a DVC remote
    results = distillation(overrides=overrides, project_dir=str(root))
    push_outputs(root)
    recorded = record_run(root, record, f"run-{flow_run.get_name() or 'local'}")
    return {"evaluation": results, "recorded_as": recorded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params.yaml value (repeatable)")
    parser.add_argument("--record", default="experiment", help="experiment | branch:<name> | none")
    parser.add_argument("--project-dir", default=".")
    args = parser.parse_args()
    try:
        overrides = parse_overrides(args.overrides)
        parse_record(args.record)
        default_remote(Path(args.project_dir))
    except (ParamsError, RecordError) as error:
        parser.error(str(error))
    with quiet_offline():
        scheduled_distillation(overrides=overrides, record=args.record, project_dir=args.project_dir)


if __name__ == "__main__":
    main()
