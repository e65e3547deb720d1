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
        lines += [f"### {dataset}", "", "| model | test accuracy | gap recovered | seconds / epoch |", "|---|---|---|---|"]
        for row in (row for row in summary if row["dataset"] == dataset):
            gap = "-" if row["gap_recovered"] is None else f"{row['gap_recovered']:+.0%}"
            lines.append(f"| {row['model']} | {row['mean_accuracy']:.2%} ± {row['std_accuracy']:.2%} | {gap} | "
                         f"{row['seconds_per_epoch']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot_gap_recovered(summary: list[dict], target: Path) -> None:
    """The share of the teacher-baseline gap each loss recovers, one bar group per dataset."""
    datasets = list(dict.fromkeys(row["dataset"] for row in summary))
    losses = list(dict.fromkeys(row["model"] for row in summary if row["gap_recovered"] is not None))
    figure = Figure(figsize=(2 + 1.2 * len(losses), 4.5), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / max(len(datasets), 1)
    for offset, dataset in enumerate(datasets):
        gaps = {row["model"]: row["gap_recovered"] for row in summary if row["dataset"] == dataset}
        axes.bar([index + offset * width for index in range(len(losses))],
                 [100 * (gaps.get(loss) or 0.0) for loss in losses], width, label=dataset)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks([index + width * (len(datasets) - 1) / 2 for index in range(len(losses))], losses, rotation=30)
    axes.set(ylabel="teacher-baseline gap recovered (%)")
    axes.legend()
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
