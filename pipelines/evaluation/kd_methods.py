"""The methods study's tables and plot (pipelines/kd_study.py): per dataset, the grid at a glance (each loss
against its same-budget labels-only control, per way and budget), then every model's test accuracy over the
seeds, the share of the teacher-control gap it recovers, the seeds on which it beats its control and its seconds
per epoch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

from matplotlib.figure import Figure

from pipelines.core.atomic import atomic_path


class Grid(NamedTuple):
    """A dataset's students as the study names them (`<loss>-<way>-<budget>`): the losses (rows), the
    `<way>-<budget>` columns (budget by budget, each way in its order), and by (loss, column) each student's
    summary row and its points above its control (on the mean accuracies)."""

    losses: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], tuple[dict, float]]


def points_over_control(row: dict, mean: dict[str, float]) -> float:
    """A measured row's mean accuracy above its control's, in points (`mean`: the dataset's, by model)."""
    return (row["mean_accuracy"] - mean[row["control"]]) * 100


def grid(summary: list[dict], dataset: str) -> Grid:
    mean = {row["model"]: row["mean_accuracy"] for row in summary if row["dataset"] == dataset}
    cells = {}
    for row in summary:
        if row["dataset"] == dataset and row.get("control") and row["model"].count("-") >= 2:
            loss, way, budget = row["model"].rsplit("-", 2)
            cells[(loss, f"{way}-{budget}")] = (row, points_over_control(row, mean))
    columns = sorted(dict.fromkeys(column for _, column in cells), key=lambda column: int(column.rsplit("-", 1)[1]))
    return Grid(list(dict.fromkeys(loss for loss, _ in cells)), columns, cells)


def render_table(summary: list[dict], seeds: list[int]) -> str:
    """Per dataset: the grid (points over the control, gap recovered, seeds above it), then every model."""
    lines = [f"Test accuracy over seeds {', '.join(map(str, seeds))}: mean ± standard deviation. Each student is "
             "measured against its labels-only control of the same budget and views: points above it (on the "
             "means), gap recovered ((student - control) / (teacher - control) per seed, averaged) and the seeds "
             "on which the student ends above / level with / below it.", ""]
    for dataset in dict.fromkeys(row["dataset"] for row in summary):
        rows = [row for row in summary if row["dataset"] == dataset]
        mean = {row["model"]: row["mean_accuracy"] for row in rows}
        lines += [f"### {dataset}", "",
                  f"Teacher - baseline: {(mean['teacher'] - mean['student_baseline']) * 100:+.2f} points.", ""]
        table = grid(summary, dataset)
        if table.cells:
            lines += ["| loss | " + " | ".join(table.columns) + " |", "|---" * (len(table.columns) + 1) + "|"]
            for loss in table.losses:
                found = [table.cells.get((loss, column)) for column in table.columns]
                lines.append(f"| {loss} | " + " | ".join("-" if cell is None else
                                                          f"{cell[1]:+.2f} ({_share(cell[0])}, {_above(cell[0])})"
                                                          for cell in found) + " |")
            lines += ["", "Each cell: points above the control (gap recovered, seeds above the control).", ""]
        lines += ["| model | test accuracy | control | vs. control (points) | gap recovered | above / level / below "
                  "| seconds / epoch |", "|---|---|---|---|---|---|---|"]
        for row in rows:
            control = row.get("control")
            gain, seeds_against = ("-", "-") if control is None else (
                f"{points_over_control(row, mean):+.2f}", f"{row['above']} / {row['level']} / {row['below']}")
            lines.append(f"| {row['model']} | {row['mean_accuracy']:.2%} ± {row['std_accuracy']:.2%} | "
                         f"{control or '-'} | {gain} | {_share(row)} | {seeds_against} | "
                         f"{row['seconds_per_epoch']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def _share(row: dict) -> str:
    return "-" if row["gap_recovered"] is None else f"{row['gap_recovered']:+.0%}"


def _above(row: dict) -> str:
    return f"{row['above']}/{row['seeds']}"


def plot_gains(summary: list[dict], target: Path) -> None:
    """One panel per dataset: the grid's points above each student's control (mean over seeds), losses down,
    way and budget across, each cell annotated with its figure and the seeds above the control. One colour
    scale for every panel, centred on zero: red below the control, blue above."""
    panels = {dataset: table for dataset in dict.fromkeys(row["dataset"] for row in summary)
              if (table := grid(summary, dataset)).cells}
    bound = max([abs(gain) for table in panels.values() for _, gain in table.cells.values()] or [1.0])
    widest = max([len(table.columns) for table in panels.values()] or [1])
    tallest = max([len(table.losses) for table in panels.values()] or [1])
    figure = Figure(figsize=(1.5 + 1.1 * widest * max(len(panels), 1), 1.3 + 0.45 * tallest), layout="constrained")
    for axes, (dataset, table) in zip(figure.subplots(1, max(len(panels), 1), squeeze=False)[0], panels.items()):
        values = [[table.cells[(loss, column)][1] if (loss, column) in table.cells else math.nan
                   for column in table.columns] for loss in table.losses]
        image = axes.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
        for (loss, column), (row, gain) in table.cells.items():
            axes.text(table.columns.index(column), table.losses.index(loss), f"{gain:+.1f}\n{_above(row)}",
                      ha="center", va="center", fontsize=7, color="white" if abs(gain) > 0.6 * bound else "black")
        axes.set_xticks(range(len(table.columns)), table.columns, rotation=30, fontsize=8)
        axes.set_yticks(range(len(table.losses)), table.losses, fontsize=8)
        axes.set_title(dataset, fontsize=9)
    if panels:
        figure.colorbar(image, ax=figure.axes, shrink=0.9).set_label("points above the control", fontsize=8)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
