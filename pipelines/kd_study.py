"""The methods study: which distillation loss pays off, and how should the student meet the teacher? For each
dataset and seed of `kd_study` in params.yaml, the pipeline's teacher and baseline student, then the student
under each named loss, each way (`ways`: the fixed transfer set, a live teacher on fresh views, function
matching) and each budget (`budgets`, epochs), named `<loss>-<way>-<budget>`, and per way and budget its
labels-only control (`control-<way>-<budget>`: the same epochs and views, cross-entropy alone). One table (mean
and spread of test accuracy over the seeds, the share of the teacher-control gap each student recovers against
its own control, seconds per epoch) and one plot.

    python -m pipelines.kd_study run DATASET SEED    # kd_study/runs/DATASET-SEED/ (the run's project), .json (its rows)
    python -m pipelines.kd_study summarize           # kd_study/results.md, results.json, gains.png

A dataset is the built-in digits as they are, with pixel noise, or warped into a harder image set
(pipelines/data/generated.py), generated with the seed into the run's folder: on the harder set the student
falls clearly below the teacher, which is where a loss can show what it recovers. Each (dataset, seed) runs
in its own process (flows/kd_methods.py starts them one after another).

The grid takes hours, so a run keeps what it has trained: kd_study/runs/DATASET-SEED/trained.json records a
fingerprint of the settings of each finished model, and a run trains only the models whose settings are new or
changed (a killed run goes on from its last finished model; a loss or budget added to the grid trains alone).
A change to the data, the teacher or the student section retrains everything; a change to the code does not
show in the settings, so delete kd_study/runs/ after one.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import statistics
from pathlib import Path
from typing import Any

from pipelines.config import PARAMS_FILE, Params, ParamsError
from pipelines.config.data import TransformParams
from pipelines.config.distill import KDStudyParams, StudentParams, StudyDataset
from pipelines.config.training import TrainParams
from pipelines.config.params import read_raw_params, validate_params, with_overrides
from pipelines.core.paths import Paths
from pipelines.core.stage import params_or_exit
from pipelines.evaluation.comparison import gap_recovered

log = logging.getLogger(__name__)
MODELS = ("teacher", "student_baseline")


def study_params(params_file: Path, dataset: str, seed: int, source: str) -> Params:
    """The pipeline's params for one run: the seed, the dataset's source, and the study's students."""
    raw = read_raw_params(params_file)
    shipped = validate_params(raw, source=str(params_file))
    students, _ = study_students(shipped.kd_study, shipped.student.train)
    return validate_params(with_overrides(raw, {"seed": seed, "data.source": source, "distill": students}),
                           source=str(params_file))


def study_students(study: KDStudyParams, train: TrainParams) -> tuple[dict[str, dict], dict[str, str]]:
    """Every student of the study as a `distill` entry, by name, and the name of each one's control; `train`
    is the student section's (its batch size stays, the epochs are each budget's)."""
    students: dict[str, dict] = {}
    controls: dict[str, str] = {}
    for way_name, way in study.ways.items():
        # a way without views trains on the stored images, whatever views the student section has
        views = {"views": (way.views or TransformParams()).model_dump(mode="json")}
        for budget in study.budgets:
            control = f"control-{way_name}-{budget}"
            students[control] = {"losses": [{"method": "ce"}], "train": {"epochs": budget,
                                                                          "batch_size": train.batch_size}, **views}
            for loss, entry in study.losses.items():
                whole = entry if isinstance(entry, StudentParams) else StudentParams(losses=entry)
                student: dict[str, Any] = whole.model_dump(mode="json", exclude_none=True)
                batch_size = whole.train.batch_size if whole.train is not None else train.batch_size
                student |= {"train": {"epochs": budget, "batch_size": batch_size}, "teacher": way.teacher, **views}
                if not way.labels:  # function matching: the teacher's outputs instead of the labels
                    student["losses"] = [{"method": "kd", "temperature": 1.0, "weight": term.weight}
                                         if term.method == "ce" else term.model_dump(mode="json")
                                         for term in whole.losses]
                students[f"{loss}-{way_name}-{budget}"] = student
                controls[f"{loss}-{way_name}-{budget}"] = control
    return students, controls


def check_losses(params: Params) -> None:
    """Every study loss's methods and options, checked as a student's are, named by their kd_study key."""
    from pipelines.kd import check_students

    def study_key(match: re.Match) -> str:  # a list of terms is the entry itself; a whole student holds `losses`
        name = match.group(1).rsplit("-", 2)[0]  # <loss>-<way>-<budget>
        return f"kd_study.losses.{name}." + ("losses." if isinstance(params.kd_study.losses[name], StudentParams)
                                             else "")

    try:
        check_students(params)
    except ParamsError as error:
        raise ParamsError(re.sub(r"distill\.([\w-]+)\.losses\.", study_key, str(error))) from None


def dataset_source(spec: StudyDataset, folder: Path) -> str:
    """The data.source of the dataset `spec` describes, generated into `folder` by `make_dataset`."""
    if spec.size is not None:
        return f"imagefolder:{folder}"
    return f"npz:{folder / 'noisy_digits.npz'}" if spec.noise > 0 else "digits"


def make_dataset(spec: StudyDataset, folder: Path, seed: int) -> None:
    """Generate the dataset `spec` describes into `folder`, anew (nothing for the digits as they are)."""
    from pipelines.data.generated import noisy_digits, warped_digits

    shutil.rmtree(folder, ignore_errors=True)
    if spec.size is not None:
        warped_digits(folder, spec, seed)
    elif spec.noise > 0:
        noisy_digits(folder / "noisy_digits.npz", spec.noise, seed)


class TrainedModels:
    """What a run folder holds, by fingerprint of the settings that trained it: `upstream` (the dataset and
    every model but the study's students: the teacher, the baseline, their data) and each student's. Written
    atomically after each model, so a killed run loses only the model it was training."""

    def __init__(self, path: Path, upstream: str) -> None:
        from pipelines.engine.resume.fingerprint import fingerprint

        self.path, self._fingerprint, self.upstream = path, fingerprint, upstream
        stored = json.loads(path.read_text()) if path.exists() else {}
        self.students: dict[str, str] = stored.get("students", {}) if stored.get("upstream") == upstream else {}
        self.has_upstream = stored.get("upstream") == upstream

    def student_key(self, student: StudentParams) -> str:
        return self._fingerprint(upstream=self.upstream, student=student.model_dump(mode="json"))

    def has(self, name: str, student: StudentParams) -> bool:
        return self.students.get(name) == self.student_key(student)

    def record_upstream(self) -> None:
        self.has_upstream, self.students = True, {}
        self._write()

    def record(self, name: str, student: StudentParams) -> None:
        self.students[name] = self.student_key(student)
        self._write()

    def _write(self) -> None:
        from pipelines.core.atomic import write_json

        write_json(self.path, {"upstream": self.upstream, "students": self.students})


def upstream_fingerprint(params: Params, spec: StudyDataset) -> str:
    """The settings every student of a run depends on: all params but the students, and the dataset's recipe."""
    from pipelines.engine.resume.fingerprint import fingerprint

    # (data.source names the run's folder, which moves with --root; the recipe and the seed make the data)
    settings = params.model_dump(mode="json", exclude={"distill": True, "kd_study": True, "data": {"source"}})
    return fingerprint(params=settings, dataset=spec.model_dump(mode="json"))


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

    run_root = root / "kd_study" / "runs" / f"{dataset}-{seed}"
    spec = params_or_exit(params_file).kd_study.datasets[dataset]
    params = study_params(params_file, dataset, seed, dataset_source(spec, run_root / "source"))
    paths = Paths(run_root)
    check_losses(params)
    trained = TrainedModels(run_root / "trained.json", upstream_fingerprint(params, spec))
    if not trained.has_upstream:
        make_dataset(spec, run_root / "source", seed)
        for stage in (prepare, augment, train_teacher, train_student, teacher_logits):
            stage(params, paths)
        trained.record_upstream()
    for name, student in params.distill.items():
        if trained.has(name, student) and paths.model(name).exists():
            log.info("%s: trained with these settings already (%s)", name, trained.path)
            continue
        teacher_features(params, paths, name)
        distill(params, paths, name)
        trained.record(name, student)
    test = open_image_set(paths.split("test"), paths.arrow_cache)
    _, controls = study_students(params.kd_study, params.student.train)
    rows = []
    for name in [*MODELS, *params.distill]:
        model, checkpoint = load_model(paths.model(name))
        accuracy = float((predict_logits(model, test.images, torch.device("cpu")).argmax(1) == test.labels)
                         .float().mean())
        log_file = paths.training_log(name) / "metrics.json"
        seconds = json.loads(log_file.read_text())["train_seconds"] / checkpoint.metrics["epochs"]
        rows.append({"dataset": dataset, "seed": seed, "model": name, "control": controls.get(name),
                     "test_accuracy": accuracy, "seconds_per_epoch": seconds})
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
    the teacher-control gap recovered against the model's own control (per seed, then averaged; a row without
    one is measured against the baseline), the seeds on which it ends above, level with and below that control,
    seconds per epoch."""
    by_run = {(row["dataset"], row["seed"], row["model"]): row for row in rows}
    summary = []
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        seeds = sorted({row["seed"] for row in rows if row["dataset"] == dataset})
        for model in dict.fromkeys(row["model"] for row in rows if row["dataset"] == dataset):
            accuracies = [by_run[(dataset, seed, model)]["test_accuracy"] for seed in seeds]
            control = by_run[(dataset, seeds[0], model)].get("control", "student_baseline")
            measured = control is not None and model not in MODELS
            controls = [by_run[(dataset, seed, control)]["test_accuracy"] for seed in seeds] if measured else []
            recovered = [share for accuracy, against, seed in zip(accuracies, controls, seeds)
                         if (share := gap_recovered(accuracy, against,
                                                    by_run[(dataset, seed, "teacher")]["test_accuracy"])) is not None]
            gains = [accuracy - against for accuracy, against in zip(accuracies, controls)]
            summary.append({
                "dataset": dataset, "model": model, "seeds": len(seeds), "control": control if measured else None,
                # seeds on which the model ends above, level with and below its control
                "above": sum(gain > 0 for gain in gains) if measured else None,
                "level": sum(gain == 0 for gain in gains) if measured else None,
                "below": sum(gain < 0 for gain in gains) if measured else None,
                "mean_accuracy": statistics.mean(accuracies),
                "std_accuracy": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "gap_recovered": statistics.mean(recovered) if recovered else None,
                "seconds_per_epoch": statistics.mean(by_run[(dataset, seed, model)]["seconds_per_epoch"]
                                                     for seed in seeds),
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
