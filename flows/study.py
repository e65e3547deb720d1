"""The optimization study flow: the study's model under every setting of `study` in params.yaml.

    python -m flows.study                                   # every setting (grid and extra)
    python -m flows.study --setting adam-cosine-batch_128 --setting recipe

The settings train on the pipeline's prepared data and transfer set, so the flow first reproduces
`check_params`, `prepare` and `augment` through DVC (nothing to do when they are up to date). Settings run one at a
time: wall times are comparable only without a neighbour on the same cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow

from pipelines.config import PARAMS_FILE, ParamsError, load_params
from pipelines.core.stage import params_or_exit
from pipelines.study import chosen_settings
from tasks.dvc_stages import dvc_stage_task
from tasks.environment import quiet_offline
from tasks.study import run_study_setting, summarize_study


@flow(name="optimization-study")
def optimization_study(project_dir: str = ".", settings: list[str] | None = None) -> list[dict]:
    """Run the named settings (default: all), then write the comparison and post it as artifacts."""
    root = Path(project_dir).resolve()
    chosen = chosen_settings(load_params(root / PARAMS_FILE), settings)
    for stage in ("check_params", "prepare", "augment"):  # each depends on the one before it
        dvc_stage_task(stage)(root)
    rows = [run_study_setting(root, name) for name in chosen]
    print(summarize_study(root, chosen))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", dest="settings", action="append", metavar="NAME",
                        help="run only this setting (repeatable); default: every setting")
    parser.add_argument("--project-dir", default=".", help="folder holding dvc.yaml and params.yaml")
    args = parser.parse_args()
    params = params_or_exit(Path(args.project_dir) / PARAMS_FILE)  # bad params: exit 2 before Prefect starts
    try:
        chosen_settings(params, args.settings)
    except ParamsError as error:
        parser.error(str(error))
    with quiet_offline():
        optimization_study(project_dir=args.project_dir, settings=args.settings)


if __name__ == "__main__":
    main()
