"""The methods study's table and plot (pipelines/kd_study.py): per dataset, each loss's test accuracy over
the seeds, the share of the teacher-baseline gap it recovers, and its seconds per epoch."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from pipelines.core.atomic import atomic_path


def render_table(summary: list[dict], seeds: list[int]) -> str:
    """One markdown table per dataset, the teacher and the baseline first."""
    lines = [f"Test accuracy over seeds {', '.join(map(str, seeds))}: mean ± standard deviation. Gap recovered: "
             "(student - baseline) / (teacher - baseline) per seed, averaged.", ""]
    for dataset in dict.fromkeys(row["dataset"] for row in summary):
        mean = {row["model"]: row["mean_accuracy"] for row in summary if row["dataset"] == dataset}
        gap = (mean["teacher"] - mean["student_baseline"]) * 100
        lines += [f"### {dataset}", "", f"Teacher - baseline: {gap:+.2f} points.", "",
                  "| model | test accuracy | gap recovered | seconds / epoch |", "|---|---|---|---|"]
        for row in (row for row in summary if row["dataset"] == dataset):
            gap = "-" if row["gap_recovered"] is None else f"{row['gap_recovered']:+.0%}"
            lines.append(f"| {row['model']} | {row['mean_accuracy']:.2%} ± {row['std_accuracy']:.2%} | {gap} | "
                         f"{row['seconds_per_epoch']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot_gains(summary: list[dict], target: Path) -> None:
    """Each loss's test accuracy minus the baseline's, in points (mean over seeds, the bar its standard
    deviation), one bar group per dataset: it stays readable where the teacher-baseline gap is a few images."""
    datasets = list(dict.fromkeys(row["dataset"] for row in summary))
    losses = list(dict.fromkeys(row["model"] for row in summary if row["model"] not in ("teacher", "student_baseline")))
    figure = Figure(figsize=(2 + 1.2 * len(losses), 4.5), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / max(len(datasets), 1)
    for offset, dataset in enumerate(datasets):
        rows = {row["model"]: row for row in summary if row["dataset"] == dataset}
        baseline = rows["student_baseline"]["mean_accuracy"]
        axes.bar([index + offset * width for index in range(len(losses))],
                 [100 * (rows[loss]["mean_accuracy"] - baseline) for loss in losses], width,
                 yerr=[100 * rows[loss]["std_accuracy"] for loss in losses], capsize=3, label=dataset)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks([index + width * (len(datasets) - 1) / 2 for index in range(len(losses))], losses, rotation=30)
    axes.set(ylabel="test accuracy - baseline student (points)")
    axes.legend()
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
