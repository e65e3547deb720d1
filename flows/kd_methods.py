"""The distillation methods study flow: the pipeline's teacher and student on each dataset of `kd_study` in
params.yaml with each seed, the student under each of its losses, then one table and one plot.

    python -m flows.kd_methods                      # every dataset and seed (make kd-study)
    python -m flows.kd_methods --dataset digits     # one dataset's seeds, then the summary of what has run

Runs go one at a time, each in its own process: seconds per epoch are comparable only without a neighbour
on the same cores. What they write stays in kd_study/ (outside DVC: the runs are the study's, not the
pipeline's); docs/kd_methods.md keeps the run it reports.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow

from pipelines.config import PARAMS_FILE, load_params
from pipelines.core.stage import params_or_exit
from tasks.environment import quiet_offline
from tasks.kd_study import run_kd_study, summarize_kd_study


@flow(name="kd-methods-study")
def kd_methods_study(project_dir: str = ".", datasets: list[str] | None = None) -> str:
    """Run every (dataset, seed) of the study, or those of `datasets`; then write the table and post it as artifacts."""
    root = Path(project_dir).resolve()
    study = load_params(root / PARAMS_FILE).kd_study
    for dataset in datasets or list(study.datasets):
        for seed in study.seeds:
            run_kd_study(root, dataset, seed)
    table = summarize_kd_study(root)
    print(table)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", dest="datasets", action="append", metavar="NAME",
                        help="run only this dataset (repeatable); default: every dataset of kd_study")
    parser.add_argument("--project-dir", default=".", help="folder holding params.yaml")
    args = parser.parse_args()
    params = params_or_exit(Path(args.project_dir) / PARAMS_FILE)  # bad params: exit 2 before Prefect starts
    unknown = [name for name in args.datasets or [] if name not in params.kd_study.datasets]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; valid: {', '.join(params.kd_study.datasets)}")
    with quiet_offline():
        kd_methods_study(project_dir=args.project_dir, datasets=args.datasets)


if __name__ == "__main__":
    main()
