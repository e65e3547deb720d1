"""The methods study's table and plot (pipelines/kd_study.py): per dataset, each student's test accuracy over
the seeds, the share of the teacher-control gap it recovers against its same-budget labels-only control, and
its seconds per epoch."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from pipelines.core.atomic import atomic_path


def render_table(summary: list[dict], seeds: list[int]) -> str:
    """One markdown table per dataset, the teacher and the baseline first."""
    lines = [f"Test accuracy over seeds {', '.join(map(str, seeds))}: mean ± standard deviation. Gap recovered: "
             "(student - control) / (teacher - control) per seed, averaged, against the student's labels-only "
             "control of the same budget and views.", ""]
    for dataset in dict.fromkeys(row["dataset"] for row in summary):
        mean = {row["model"]: row["mean_accuracy"] for row in summary if row["dataset"] == dataset}
        gap = (mean["teacher"] - mean["student_baseline"]) * 100
        lines += [f"### {dataset}", "", f"Teacher - baseline: {gap:+.2f} points.", "",
                  "| model | test accuracy | control | vs. control (points) | gap recovered | seconds / epoch |",
                  "|---|---|---|---|---|---|"]
        for row in (row for row in summary if row["dataset"] == dataset):
            gap = "-" if row["gap_recovered"] is None else f"{row['gap_recovered']:+.0%}"
            control = row.get("control")
            gain = "-" if control is None else f"{(row['mean_accuracy'] - mean[control]) * 100:+.2f}"
            lines.append(f"| {row['model']} | {row['mean_accuracy']:.2%} ± {row['std_accuracy']:.2%} | "
                         f"{control or '-'} | {gain} | {gap} | {row['seconds_per_epoch']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot_gains(summary: list[dict], target: Path) -> None:
    """Each student's test accuracy minus its control's, in points (mean over seeds, the bar its standard
    deviation), one bar group per dataset: it stays readable where the teacher-control gap is a few images."""
    datasets = list(dict.fromkeys(row["dataset"] for row in summary))
    losses = list(dict.fromkeys(row["model"] for row in summary if row.get("control")))
    figure = Figure(figsize=(2 + 0.6 * len(losses), 4.5), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / max(len(datasets), 1)
    for offset, dataset in enumerate(datasets):
        rows = {row["model"]: row for row in summary if row["dataset"] == dataset}
        axes.bar([index + offset * width for index in range(len(losses))],
                 [100 * (rows[loss]["mean_accuracy"] - rows[rows[loss]["control"]]["mean_accuracy"])
                  for loss in losses], width,
                 yerr=[100 * rows[loss]["std_accuracy"] for loss in losses], capsize=3, label=dataset)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks([index + width * (len(datasets) - 1) / 2 for index in range(len(losses))], losses, rotation=30)
    axes.set(ylabel="test accuracy - same-budget control (points)")
    axes.legend()
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
