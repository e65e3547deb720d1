"""Does distillation help? The whole pipeline once per seed, each distilled student against the baseline
student, its labels-only control, on the test split: the gain in points and the share of the teacher's lead
over the control it recovers, per seed and on average (the report's figures, over seeds).

    python -m benchmarks.kd_vs_baseline [--seeds 0 1 2] [--params params.yaml] [--source SOURCE] [--jobs N]

`--source` runs the same comparison on another dataset than params.yaml's (any data.source: an image folder
of your own, `imagefolder:/data/digits28`), with every other setting as shipped: how the shipped params are
checked on a held-out set kept outside the project (`make bench SOURCE=imagefolder:/data/digits28`).

`--jobs N` runs N seeds at a time, each in its own process on its share of the cores (the models are small:
one process does not fill many cores), and prints them in seed order.

Each seed changes the split, the augmentation, the initializations and the batch order. Runs in a
temporary folder: the project's own artifacts are not touched. Prints a markdown table and the means (the
stages' progress goes to stderr). A student whose budget differs from the baseline's is named: the baseline is
then no control of it.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from pipelines.augment import augment
from pipelines.config import load_params
from pipelines.distill import distill
from pipelines.evaluation.comparison import budget_differences, gap_recovered
from pipelines.evaluate import evaluate
from pipelines.core.paths import Paths
from pipelines.prepare import prepare
from pipelines.teacher_logits import teacher_logits
from pipelines.train_student import train_student
from pipelines.train_teacher import train_teacher

# The stages' progress, on stderr: `processName` tells the seeds apart when several run at a time.
LOG_FORMAT = "%(asctime)s %(processName)s %(name)s %(levelname)s %(message)s"
# Every stage before `evaluate`, whose results the benchmark reads.
TRAINING_STAGES = (prepare, augment, train_teacher, train_student, teacher_logits, distill)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--source", help="a data.source to run on instead of params.yaml's (imagefolder:PATH, ...)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at a time, each in its own process")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: at least 1")
    data = {"data.source": args.source} if args.source else {}
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)

    shipped = load_params(args.params, data)
    models = shipped.model_names
    students = models[2:]  # the distilled ones, after the teacher and the baseline
    for name in students:
        if differences := budget_differences(shipped, name):
            print(f"{name} is not at the baseline's budget ({'; '.join(differences)}): its gain is no measure of "
                  f"distillation\n")
    accuracy: dict[str, list[float]] = {name: [] for name in models}
    gains = " | ".join(f"{name} - control (points) | {name} gap recovered" for name in students)
    print("| seed | " + " | ".join(models) + f" | {gains} | seconds |")
    print("|---|" + "---|" * (len(models) + 2 * len(students) + 1))
    for seed, (results, seconds) in zip(args.seeds, run_seeds(args.params, data, args.seeds, args.jobs)):
        for name in models:
            accuracy[name].append(results[name])
        cells = " | ".join(f"{results[name]:.2%}" for name in models)
        gain = " | ".join(comparison(results[name], results["student_baseline"], results["teacher"])
                          for name in students)
        print(f"| {seed} | {cells} | {gain} | {seconds:.0f} |", flush=True)

    means = {name: statistics.mean(values) for name, values in accuracy.items()}
    cells = " | ".join(f"{means[name]:.2%}" for name in models)
    mean_gains = [comparison(means[name], means["student_baseline"], means["teacher"]) for name in students]
    print(f"| mean | {cells} | " + " | ".join(mean_gains) + " | |")
    for name in students:
        ahead = sum(student >= control for student, control in zip(accuracy[name], accuracy["student_baseline"]))
        print(f"\nOver seeds {args.seeds}, the distilled student {name} is at least as accurate as its control on "
              f"{ahead} of {len(args.seeds)} seeds.")


def run_seeds(params_file: Path, data: dict[str, str], seeds: list[int],
              jobs: int) -> Iterator[tuple[dict[str, float], float]]:
    """Each seed's test accuracies by model and its seconds, in the order of `seeds`: here, one after another,
    or `jobs` at a time in processes sharing the cores."""
    if jobs == 1:
        yield from (run_seed(params_file, data, seed) for seed in seeds)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, multiprocessing.get_context("spawn"), start_worker, (threads, os.getpid())) as pool:
        yield from (future.result() for future in [pool.submit(run_seed, params_file, data, seed) for seed in seeds])


def start_worker(threads: int, benchmark: int) -> None:
    """A process of `--jobs`: its share of the cores, its stages' progress on stderr, and an end when the
    benchmark's process ends (killed, it cannot stop its workers: they would train on, unseen, for hours)."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    threading.Thread(target=_end_with, args=(benchmark,), daemon=True).start()


def _end_with(benchmark: int) -> None:
    while os.getppid() == benchmark:  # (the pid itself, not the parent's at start: it may have died already)
        time.sleep(1)
    os._exit(1)


def run_seed(params_file: Path, data: dict[str, str], seed: int) -> tuple[dict[str, float], float]:
    """The pipeline once with `seed`, in a temporary folder: each model's test accuracy, and the seconds taken."""
    params = load_params(params_file, {"seed": seed, **data})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        paths = Paths(Path(folder))
        for stage in TRAINING_STAGES:
            stage(params, paths)
        results = evaluate(params, paths)
    return {name: results[name]["accuracy"] for name in params.model_names}, time.perf_counter() - started


def comparison(student: float, control: float, teacher: float) -> str:
    """The gain over the control in points, and the share of the teacher's lead recovered (two table cells)."""
    recovered = gap_recovered(student, control, teacher)
    return f"{(student - control) * 100:+.2f} | " + ("n/a (no lead)" if recovered is None else f"{recovered:.0%}")


if __name__ == "__main__":
    main()
