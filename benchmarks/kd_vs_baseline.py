"""Does distillation help? The whole pipeline once per seed, distilled vs. baseline student on the test split.

    python -m benchmarks.kd_vs_baseline [--seeds 0 1 2] [--params params.yaml]

Each seed changes the split, the augmentation, the initializations and the batch order. Runs in a
temporary folder: the project's own artifacts are not touched. Prints a markdown table and the means.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pipelines.augment import augment
from pipelines.config import load_params
from pipelines.distill import distill
from pipelines.evaluate import evaluate
from pipelines.core.paths import Paths
from pipelines.prepare import prepare
from pipelines.teacher_logits import teacher_logits
from pipelines.train_student import train_student
from pipelines.train_teacher import train_teacher

# Every stage before `evaluate`, whose results the benchmark reads.
TRAINING_STAGES = (prepare, augment, train_teacher, train_student, teacher_logits, distill)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    models = load_params(args.params).model_names
    students = models[2:]  # the distilled ones, after the teacher and the baseline
    accuracy: dict[str, list[float]] = {name: [] for name in models}
    gains = " | ".join(f"{name} - baseline (points)" for name in students)
    print("| seed | " + " | ".join(models) + f" | {gains} | seconds |")
    print("|---|" + "---|" * (len(models) + len(students) + 1))
    for seed in args.seeds:
        params = load_params(args.params, {"seed": seed})
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            paths = Paths(Path(folder))
            for stage in TRAINING_STAGES:
                stage(params, paths)
            results = evaluate(params, paths)
        for name in models:
            accuracy[name].append(results[name]["accuracy"])
        cells = " | ".join(f"{results[name]['accuracy']:.2%}" for name in models)
        gain = " | ".join(f"{(results[name]['accuracy'] - results['student_baseline']['accuracy']) * 100:+.2f}"
                          for name in students)
        print(f"| {seed} | {cells} | {gain} | {time.perf_counter() - started:.0f} |", flush=True)

    means = {name: statistics.mean(values) for name, values in accuracy.items()}
    cells = " | ".join(f"{means[name]:.2%}" for name in models)
    gains = {name: (means[name] - means["student_baseline"]) * 100 for name in students}
    print(f"| mean | {cells} | " + " | ".join(f"{gain:+.2f}" for gain in gains.values()) + " | |")
    for name, gain in gains.items():
        verdict = "at least as accurate as" if gain >= 0 else "LESS accurate than"
        print(f"\nOver seeds {args.seeds}, the distilled student {name} is {verdict} the baseline student "
              f"({gain:+.2f} points).")


if __name__ == "__main__":
    main()
