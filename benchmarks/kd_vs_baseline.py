"""Does distillation help? The whole pipeline once per seed, each distilled student against the baseline
student, its labels-only control, on the test split: the gain in points and the share of the teacher's lead
over the control it recovers, per seed and on average (the report's figures, over seeds).

    python -m benchmarks.kd_vs_baseline [--seeds 0 1 2] [--params params.yaml] [--source SOURCE]

`--source` runs the same comparison on another dataset than params.yaml's (any data.source: an image folder
of your own, `imagefolder:/data/digits28`), with every other setting as shipped: how the shipped params are
checked on a held-out set kept outside the project (`make bench SOURCE=imagefolder:/data/digits28`).

Each seed changes the split, the augmentation, the initializations and the batch order. Runs in a
temporary folder: the project's own artifacts are not touched. Prints a markdown table and the means. A
student whose budget differs from the baseline's is named: the baseline is then no control of it.
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
from pipelines.evaluation.comparison import budget_differences, gap_recovered
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
    parser.add_argument("--source", help="a data.source to run on instead of params.yaml's (imagefolder:PATH, ...)")
    args = parser.parse_args()
    data = {"data.source": args.source} if args.source else {}

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
    for seed in args.seeds:
        params = load_params(args.params, {"seed": seed, **data})
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            paths = Paths(Path(folder))
            for stage in TRAINING_STAGES:
                stage(params, paths)
            results = evaluate(params, paths)
        for name in models:
            accuracy[name].append(results[name]["accuracy"])
        cells = " | ".join(f"{results[name]['accuracy']:.2%}" for name in models)
        gain = " | ".join(comparison(results[name]["accuracy"], results["student_baseline"]["accuracy"],
                                     results["teacher"]["accuracy"]) for name in students)
        print(f"| {seed} | {cells} | {gain} | {time.perf_counter() - started:.0f} |", flush=True)

    means = {name: statistics.mean(values) for name, values in accuracy.items()}
    cells = " | ".join(f"{means[name]:.2%}" for name in models)
    mean_gains = [comparison(means[name], means["student_baseline"], means["teacher"]) for name in students]
    print(f"| mean | {cells} | " + " | ".join(mean_gains) + " | |")
    for name in students:
        ahead = sum(student >= control for student, control in zip(accuracy[name], accuracy["student_baseline"]))
        print(f"\nOver seeds {args.seeds}, the distilled student {name} is at least as accurate as its control on "
              f"{ahead} of {len(args.seeds)} seeds.")


def comparison(student: float, control: float, teacher: float) -> str:
    """The gain over the control in points, and the share of the teacher's lead recovered (two table cells)."""
    recovered = gap_recovered(student, control, teacher)
    return f"{(student - control) * 100:+.2f} | " + ("n/a (no lead)" if recovered is None else f"{recovered:.0%}")


if __name__ == "__main__":
    main()
