"""The distillation methods study flow: the pipeline's teacher and student on each dataset of `kd_study` in
params.yaml with each seed, the student under each of its losses, then one table and one plot.

    python -m flows.kd_methods                      # every dataset and seed (make kd-study)
    python -m flows.kd_methods --dataset digits     # one dataset's seeds, then the summary of what has run
    python -m flows.kd_methods --jobs 2             # two runs at a time, each on half the cores

Each run is a process of its own. By default they go one at a time, on every core; `--jobs N` runs N at a
time, each on its share of the cores: the models are small and one run does not fill many cores, so N runs on
N cores take about the time of one. Seconds per epoch are comparable between runs made the same way. What the
runs write stays in kd_study/ (outside DVC: the runs are the study's, not the pipeline's); docs/kd_methods.md
keeps the run it reports.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from prefect import flow
from prefect.futures import PrefectFuture, as_completed, wait

from pipelines.config import PARAMS_FILE, load_params
from pipelines.core.stage import params_or_exit
from tasks.environment import quiet_offline
from tasks.kd_study import run_kd_study, summarize_kd_study


@flow(name="kd-methods-study")
def kd_methods_study(project_dir: str = ".", datasets: list[str] | None = None, jobs: int = 1) -> str:
    """Run every (dataset, seed) of the study, or those of `datasets`, `jobs` at a time; then write the table
    and post it as artifacts. A failed run fails the flow once the others have ended."""
    root = Path(project_dir).resolve()
    study = load_params(root / PARAMS_FILE).kd_study
    runs = [(dataset, seed) for dataset in datasets or list(study.datasets) for seed in study.seeds]
    if jobs == 1:
        for dataset, seed in runs:
            run_kd_study(root, dataset, seed)
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        started: list[PrefectFuture] = []
        running: list[PrefectFuture] = []
        for dataset, seed in runs:
            if len(running) == jobs:
                running.remove(next(as_completed(running)))
            running.append(run_kd_study.submit(root, dataset, seed, threads))
            started.append(running[-1])
        wait(started)
        for future in started:
            future.result()  # the first failed run's error
    table = summarize_kd_study(root)
    print(table)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", dest="datasets", action="append", metavar="NAME",
                        help="run only this dataset (repeatable); default: every dataset of kd_study")
    parser.add_argument("--project-dir", default=".", help="folder holding params.yaml")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each on its share of the cores")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: at least 1")
    params = params_or_exit(Path(args.project_dir) / PARAMS_FILE)  # bad params: exit 2 before Prefect starts
    unknown = [name for name in args.datasets or [] if name not in params.kd_study.datasets]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; valid: {', '.join(params.kd_study.datasets)}")
    with quiet_offline():
        kd_methods_study(project_dir=args.project_dir, datasets=args.datasets, jobs=args.jobs)


if __name__ == "__main__":
    main()
