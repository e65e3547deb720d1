"""The optimization study's outputs: the table, the convergence plot and DVC plot definitions, from the
settings' dvclive folders and result rows (python -m pipelines.study writes them)."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import yaml
from matplotlib import colormaps
from matplotlib.figure import Figure  # the object API draws to files without a display backend

from pipelines.config import Params
from pipelines.core.atomic import atomic_path, write_text
from pipelines.core.paths import Paths

TABLE_COLUMNS = {
    "setting": "setting",
    "optimizer": "optimizer",
    "schedule": "schedule",
    "batch_size": "batch",
    "train_images": "images",  # rows written before a setting could name train_images lack it: "-"
    "train_loss": "train loss",  # the last epoch's mean
    "val_accuracy": "val acc",
    "test_accuracy": "test acc",
    "steps": "steps",
    "steps_to_target": "steps to target",
    "steps_to_loss_target": "steps to loss target",
    "wall_seconds": "wall s",
    "peak_rss_mb": "peak RSS MB",
}


def read_curve(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) rows of one metric from a dvclive folder."""
    with open(run_dir / "plots" / "metrics" / f"{metric}.tsv", newline="") as file:
        return [(int(row["step"]), float(row[metric])) for row in csv.DictReader(file, delimiter="\t")]


def steps_until(run_dir: Path, metric: str, reached: Callable[[float], bool]) -> int | None:
    """Optimizer steps taken by the end of the first epoch whose `metric` was `reached` (None if none was)."""
    for step, value in read_curve(run_dir, metric):
        if reached(value):
            return step + 1
    return None


def render_table(rows: list[dict], params: Params) -> str:
    study = params.study
    lines = [
        f"Study of `{study.model}` (seed {params.seed}): the same data, model and epochs for every setting but "
        f"what its params.yaml entry replaces; steps to target = optimizer steps until validation accuracy first "
        f"reached {study.target_accuracy:.0%}, steps to loss target = until the training loss (an epoch's mean) "
        f"first fell below {study.target_train_loss:g} (- = never).",
        "",
        "| " + " | ".join(TABLE_COLUMNS.values()) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    for row in rows:
        cells = []
        for key in TABLE_COLUMNS:
            value = row.get(key)
            if value is None:
                cells.append("-")
            elif key.endswith("accuracy"):
                cells.append(f"{value:.2%}")
            elif key.endswith("loss"):
                cells.append(f"{value:.3g}")
            elif isinstance(value, float):
                cells.append(f"{value:.1f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_convergence(paths: Paths, names: list[str], target: Path) -> None:
    """Training loss and validation accuracy against optimizer steps, one line per setting (log-scale steps)."""
    columns = math.ceil(len(names) / 22)  # legend columns: about 22 settings each
    figure = Figure(figsize=(12 + 3 * columns, 7), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    colors = colormaps["tab20"].resampled(max(len(names), 1))
    for index, name in enumerate(names):
        run_dir = paths.study_run(name)
        style = {"color": colors(index), "linestyle": ("-", "--", ":", "-.")[index % 4], "linewidth": 1.2}
        for axes, metric in ((loss_axes, "train_loss"), (accuracy_axes, "val_accuracy")):
            steps, values = zip(*read_curve(run_dir, metric))
            axes.plot([step + 1 for step in steps], values, label=name, **style)
    loss_axes.set(xscale="log", yscale="log", xlabel="optimizer steps", ylabel="training loss (epoch mean)")
    accuracy_axes.set(xscale="log", xlabel="optimizer steps", ylabel="validation accuracy", ylim=(0.0, 1.0))
    for axes in (loss_axes, accuracy_axes):
        axes.grid(True, which="both", alpha=0.3)
    figure.legend(*accuracy_axes.get_legend_handles_labels(), loc="outside right upper", ncols=columns, fontsize=7)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


def write_dvc_plots(paths: Paths, names: list[str]) -> None:
    """study/dvc.yaml: plot definitions only (no stages), so `dvc plots show` draws the study's curves."""
    def lines(metric: str) -> dict:
        return {f"runs/{name}/plots/metrics/{metric}.tsv": metric for name in names}

    plots = [
        {"Study: validation accuracy": {"x": "step", "y": lines("val_accuracy")}},
        {"Study: training loss": {"x": "step", "y": lines("train_loss")}},
    ]
    write_text(paths.study / "dvc.yaml", yaml.safe_dump({"plots": plots}, sort_keys=False))
