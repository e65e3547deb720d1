"""The HTML report's figures (pipelines/evaluation/html_report.py), drawn with matplotlib from what the pipeline
recorded: metrics/eval.json (`results`: model name -> test metrics) and the training stages' dvclive logs
(`Curves`: metric -> (epochs, values)). Nothing here loads a model or reads the data: a figure changes only
when those records do. Each function returns the figure; `png` encodes it for the page."""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # the object API draws without a display backend (Agg for PNG)
from matplotlib.ticker import MaxNLocator

from pipelines.evaluation.report import BASELINE, TEACHER, latency_columns

# One training log: each per-epoch metric (train_loss, train_<term>, val_loss, val_accuracy) as its epochs
# (1-based) and values.
Curves = dict[str, tuple[list[int], list[float]]]

DPI = 100
WIDTH = 11.5  # inches: every figure fits the page's column at its own pixel size, so it is never rescaled
HEIGHT = 3.8


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes; the same figure gives the same bytes (no date in the file)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def training_curves(logs: dict[str, Curves]) -> Figure:
    """Training loss, validation loss and validation accuracy against epochs, one line per model."""
    figure = Figure(figsize=(WIDTH, HEIGHT), layout="constrained")
    panels = figure.subplots(1, 3)
    for axes, metric, label in zip(panels, ("train_loss", "val_loss", "val_accuracy"),
                                   ("training loss (its objective, epoch mean)", "validation loss (cross-entropy)",
                                    "validation accuracy")):
        for name, curves in logs.items():
            epochs, values = curves[metric]
            axes.plot(epochs, values, marker="o", markersize=3, label=name)
        axes.set(xlabel="epoch", ylabel=label)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axes.grid(True, alpha=0.3)
    panels[2].legend(fontsize=8)
    return figure


def loss_term_curves(name: str, curves: Curves) -> Figure:
    """A distilled student's loss terms (each term's epoch mean) and the weighted total it minimised, against
    epochs, beside its validation loss."""
    figure = Figure(figsize=(WIDTH, HEIGHT), layout="constrained")
    terms_axes, total_axes = figure.subplots(1, 2)
    for metric in sorted(metric for metric in curves if metric.startswith("train_") and metric != "train_loss"):
        terms_axes.plot(*curves[metric], marker="o", markersize=3, label=metric.removeprefix("train_"))
    terms_axes.set(xlabel="epoch", ylabel="loss term (epoch mean)", title=f"{name}: loss terms")
    for metric, label in (("train_loss", "training objective (weighted sum)"), ("val_loss", "validation loss")):
        total_axes.plot(*curves[metric], marker="o", markersize=3, label=label)
    total_axes.set(xlabel="epoch", ylabel="loss", title=f"{name}: objective and validation loss")
    for axes in (terms_axes, total_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    return figure


def tradeoffs(results: dict[str, dict]) -> Figure:
    """Test accuracy against parameters and against CPU latency at each batch size measured: where each model
    sits on the size and speed it costs."""
    columns = latency_columns(results)
    figure = Figure(figsize=(WIDTH, HEIGHT), layout="constrained")
    panels = np.atleast_1d(figure.subplots(1, 1 + len(columns)))
    accuracy = [100 * metrics["accuracy"] for metrics in results.values()]
    labelled_scatter(panels[0], [metrics["params"] for metrics in results.values()], accuracy, list(results))
    panels[0].set(xscale="log", xlabel="parameters", ylabel="test accuracy (%)")
    for axes, column in zip(panels[1:], columns):
        labelled_scatter(axes, [metrics[column] for metrics in results.values()], accuracy, list(results))
        axes.set(xscale="log", xlabel=f"CPU ms per batch of {column.removeprefix('latency_ms_batch_')}",
                 ylabel="test accuracy (%)")
    return figure


def labelled_scatter(axes: Axes, x: list[float], y: list[float], names: list[str]) -> None:
    """One point per model, each named beside it."""
    for index, (x_value, y_value, name) in enumerate(zip(x, y, names)):
        axes.scatter([x_value], [y_value], s=40, color=f"C{index}")
        axes.annotate(name, (x_value, y_value), textcoords="offset points", xytext=(5, 4), fontsize=8)
    axes.grid(True, which="both", alpha=0.3)
    axes.margins(0.25)


def per_class_f1(results: dict[str, dict], student: str) -> Figure:
    """A distilled student's F1 on each class beside the labels-only baseline's (its control where their budgets
    match) and the teacher's: what distillation changed, class by class."""
    classes = list(results[TEACHER]["per_class"])
    figure = Figure(figsize=(min(WIDTH, max(6.0, 0.6 * len(classes) + 2)), HEIGHT), layout="constrained")
    axes = figure.subplots()
    models = (TEACHER, BASELINE, student)
    width = 0.8 / len(models)
    positions = np.arange(len(classes))
    for offset, name in enumerate(models):
        label = f"{name} (labels only)" if name == BASELINE else name
        axes.bar(positions + (offset - 1) * width, [results[name]["per_class"][c]["f1"] for c in classes], width,
                 label=label, color=f"C{list(results).index(name)}")
    axes.set_xticks(positions, classes, rotation=45 if len(classes) > 12 else 0)
    axes.set(xlabel="class", ylabel="F1 on the test split", ylim=(0.0, 1.05), title=student)
    axes.legend(fontsize=8, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.2 if len(classes) > 12 else -0.15))
    axes.grid(True, axis="y", alpha=0.3)
    return figure


def confusion_matrices(results: dict[str, dict]) -> Figure:
    """Each model's confusion matrix on the test split (rows the actual class, columns the predicted one),
    shaded by the share of the row's images, with the counts written in where the classes are few."""
    classes = list(results[TEACHER]["per_class"])
    columns = min(len(results), 3)
    rows = math.ceil(len(results) / columns)
    figure = Figure(figsize=(WIDTH, WIDTH / 3 * rows), layout="constrained")
    panels = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for axes, (name, metrics) in zip(panels, results.items()):
        counts = np.array(metrics["confusion_matrix"], dtype=float)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        if len(classes) <= 12:
            for (actual, predicted), count in np.ndenumerate(counts):
                axes.text(predicted, actual, f"{count:.0f}", ha="center", va="center", fontsize=7,
                          color="white" if shares[actual, predicted] > 0.5 else "black")
        ticks = range(len(classes)) if len(classes) <= 30 else []
        axes.set_xticks(list(ticks), [classes[i] for i in ticks], fontsize=7)
        axes.set_yticks(list(ticks), [classes[i] for i in ticks], fontsize=7)
        axes.set(xlabel="predicted", ylabel="actual", title=f"{name} ({metrics['accuracy']:.1%})")
    for axes in panels[len(results):]:
        axes.set_axis_off()
    return figure


def agreement(results: dict[str, dict]) -> Figure:
    """How often each student predicts what the teacher predicts: overall, then by actual class (where
    they part)."""
    students = [name for name in results if name != TEACHER]
    classes = list(results[TEACHER]["per_class"])
    figure = Figure(figsize=(WIDTH, HEIGHT), layout="constrained")
    overall, by_class = figure.subplots(1, 2, width_ratios=(1, 2.5))
    colors = [f"C{list(results).index(name)}" for name in students]
    overall.bar(students, [100 * results[name]["agreement_with_teacher"] for name in students], color=colors)
    overall.set(ylabel="same prediction as the teacher (%)", ylim=(0.0, 105.0), title="overall")
    overall.tick_params(axis="x", labelrotation=20)
    for name, color in zip(students, colors):
        shares = [results[name]["agreement_per_class"][c] for c in classes]
        by_class.plot(range(len(classes)), [math.nan if share is None else 100 * share for share in shares],
                      marker="o", markersize=4, color=color, label=name)
    by_class.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 12 else 0)
    by_class.set(xlabel="actual class", ylabel="same prediction as the teacher (%)", ylim=(0.0, 105.0),
                 title="by class")
    by_class.legend(fontsize=8)
    for axes in (overall, by_class):
        axes.grid(True, axis="y", alpha=0.3)
    return figure
