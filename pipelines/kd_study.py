"""The methods study: which distillation loss pays off? For each dataset and seed of `kd_study` in
params.yaml, the pipeline's teacher and baseline student, then the student under each named loss; one table
(mean and spread of test accuracy over the seeds, the share of the teacher-baseline gap each loss recovers,
seconds per epoch) and one plot.

    python -m pipelines.kd_study run DATASET SEED    # kd_study/runs/DATASET-SEED/ (the run's project), .json (its rows)
    python -m pipelines.kd_study summarize           # kd_study/results.md, results.json, gains.png

A dataset is the built-in digits with Gaussian pixel noise of the given standard deviation (0: as they
are), generated with the seed into an npz file: the noisy set is harder, so the student falls further below
the teacher. Each (dataset, seed) runs in its own process (flows/kd_methods.py starts them one after another).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
from pathlib import Path

import numpy as np

from pipelines.config import PARAMS_FILE, Params, ParamsError
from pipelines.config.params import apply_overrides, read_raw_params, validate_params
from pipelines.core.paths import Paths
from pipelines.core.stage import params_or_exit

log = logging.getLogger(__name__)
MODELS = ("teacher", "student_baseline")


def study_params(params_file: Path, dataset: str, seed: int, source: str) -> Params:
    """The pipeline's params for one run: the seed, the dataset's source, and one student per study loss."""
    raw = read_raw_params(params_file)
    losses = raw["kd_study"]["losses"]
    return validate_params(apply_overrides(raw, {
        "seed": seed, "data.source": source, "distill": {name: {"losses": terms} for name, terms in losses.items()},
    }), source=str(params_file))


def check_losses(params: Params) -> None:
    """Every study loss's methods and options, checked as a student's are, named by their kd_study key."""
    from pipelines.kd import check_students

    try:
        check_students(params)
    except ParamsError as error:
        raise ParamsError(re.sub(r"distill\.([\w-]+)\.losses\.", r"kd_study.losses.\1.", str(error))) from None


def noisy_digits(path: Path, noise: float, seed: int) -> None:
    """The built-in digits with Gaussian pixel noise of standard deviation `noise` (on [0, 1]), as npz."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    clean = digits.images / 16.0
    noisy = clean + np.random.default_rng(seed).normal(0.0, noise, clean.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=(np.clip(noisy, 0.0, 1.0) * 255).round().astype(np.uint8)[:, None], y=digits.target)


def run(params_file: Path, root: Path, dataset: str, seed: int) -> list[dict]:
    """Train the teacher, the baseline and a student per study loss on `dataset` with `seed`; return and
    write the rows (test accuracy and seconds per epoch of each model)."""
    import torch

    from pipelines.augment import augment
    from pipelines.core.atomic import write_json
    from pipelines.data.images import open_image_set
    from pipelines.distill import distill
    from pipelines.engine.checkpoint import load_model
    from pipelines.engine.inference import predict_logits
    from pipelines.prepare import prepare
    from pipelines.teacher_features import teacher_features
    from pipelines.teacher_logits import teacher_logits
    from pipelines.train_student import train_student
    from pipelines.train_teacher import train_teacher

    noise = params_or_exit(params_file).kd_study.datasets[dataset]
    run_root = root / "kd_study" / "runs" / f"{dataset}-{seed}"
    source = "digits"
    if noise > 0:
        noisy_digits(run_root / "noisy_digits.npz", noise, seed)
        source = f"npz:{run_root / 'noisy_digits.npz'}"
    params, paths = study_params(params_file, dataset, seed, source), Paths(run_root)
    check_losses(params)
    for stage in (prepare, augment, train_teacher, train_student, teacher_logits):
        stage(params, paths)
    for name in params.distill:
        teacher_features(params, paths, name)
        distill(params, paths, name)
    test = open_image_set(paths.split("test"), paths.arrow_cache)
    rows = []
    for name in [*MODELS, *params.distill]:
        model, checkpoint = load_model(paths.model(name))
        accuracy = float((predict_logits(model, test.images, torch.device("cpu")).argmax(1) == test.labels).float().mean())
        log_file = paths.training_log(name) / "metrics.json"
        seconds = json.loads(log_file.read_text())["train_seconds"] / checkpoint.metrics["epochs"]
        rows.append({"dataset": dataset, "seed": seed, "model": name, "test_accuracy": accuracy,
                     "seconds_per_epoch": seconds})
    write_json(root / "kd_study" / "runs" / f"{dataset}-{seed}.json", rows)
    return rows


def summarize(params: Params, root: Path) -> list[dict]:
    """The study's table over every (dataset, seed) run: kd_study/results.md, results.json and gains.png."""
    from pipelines.core.atomic import write_json, write_text
    from pipelines.evaluation.kd_methods import plot_gains, render_table

    study = root / "kd_study"
    configured = [study / "runs" / f"{dataset}-{seed}.json" for dataset in params.kd_study.datasets
                  for seed in params.kd_study.seeds]
    runs = [path for path in configured if path.exists()]  # those that have run (a flow may run one dataset)
    if not runs:
        raise FileNotFoundError(f"no study run in {study / 'runs'} yet: python -m pipelines.kd_study run DATASET SEED")
    rows = [row for path in runs for row in json.loads(path.read_text())]
    summary = summarize_rows(rows)
    write_json(study / "results.json", summary)
    write_text(study / "results.md", render_table(summary, sorted({row["seed"] for row in rows})))
    plot_gains(summary, study / "gains.png")
    return summary


def summarize_rows(rows: list[dict]) -> list[dict]:
    """Per dataset and model: mean and standard deviation of test accuracy over the seeds, the mean share of
    the teacher-baseline gap recovered (per seed, then averaged), seconds per epoch."""
    by_run = {(row["dataset"], row["seed"], row["model"]): row for row in rows}
    summary = []
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        seeds = sorted({row["seed"] for row in rows if row["dataset"] == dataset})
        for model in dict.fromkeys(row["model"] for row in rows if row["dataset"] == dataset):
            accuracies = [by_run[(dataset, seed, model)]["test_accuracy"] for seed in seeds]
            gaps = [by_run[(dataset, seed, "teacher")]["test_accuracy"] - by_run[(dataset, seed, "student_baseline")]["test_accuracy"]
                    for seed in seeds]
            recovered = [(accuracy - by_run[(dataset, seed, "student_baseline")]["test_accuracy"]) / gap
                         for accuracy, gap, seed in zip(accuracies, gaps, seeds) if gap > 0]
            summary.append({
                "dataset": dataset, "model": model, "seeds": len(seeds),
                "mean_accuracy": statistics.mean(accuracies),
                "std_accuracy": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "gap_recovered": statistics.mean(recovered) if recovered and model not in MODELS else None,
                "seconds_per_epoch": statistics.mean(by_run[(dataset, seed, model)]["seconds_per_epoch"] for seed in seeds),
            })
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "summarize"])
    parser.add_argument("dataset", nargs="?", help="run: a dataset of kd_study.datasets")
    parser.add_argument("seed", nargs="?", type=int, help="run: a seed of kd_study.seeds")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    parser.add_argument("--root", type=Path, default=Path("."))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = params_or_exit(args.params)
    if args.command == "summarize":
        summarize(params, args.root)
        return
    if args.dataset not in params.kd_study.datasets or args.seed is None:
        parser.error(f"run takes a dataset ({', '.join(params.kd_study.datasets)}) and a seed")
    run(args.params, args.root, args.dataset, args.seed)


if __name__ == "__main__":
    main()
