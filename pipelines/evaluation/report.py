"""The markdown report (reports/report.md): the models' test metrics side by side, each distilled student
against its same-budget labels-only control (the gain and the share of the teacher's lead it recovers), and
per-class F1. It only renders metrics/eval.json, so rewording it never reruns the measurements. The HTML report
(pipelines/evaluation/html_report.py) shows the same table and comparisons, built by the functions here."""

from __future__ import annotations

from pipelines.config import Params
from pipelines.evaluation.comparison import budget_differences, gap_recovered

TEACHER, BASELINE = "teacher", "student_baseline"


def render_report(results: dict[str, dict], params: Params) -> str:
    """The report of `results` (metrics/eval.json: model name -> metrics), described with `params`."""
    header, rows = comparison_table(results)
    lines = [
        "# Distillation report",
        "",
        summary(results, params),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    lines.append("")
    lines += comparisons(results, params)
    lines += [
        "",
        "Per-class F1:",
        "",
        "| class | " + " | ".join(results) + " |",
        "|" + "---|" * (len(results) + 1),
    ]
    for class_name in results[TEACHER]["per_class"]:
        cells = [f"{results[name]['per_class'][class_name]['f1']:.3f}" for name in results]
        lines.append(f"| {class_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary(results: dict[str, dict], params: Params) -> str:
    """The report's first sentence: the dataset, its test images, and each distilled student's method."""
    test_count = sum(scores["support"] for scores in results[TEACHER]["per_class"].values())
    return (f"Dataset `{params.data.source}`, {test_count} test images. Distilled students: "
            + "; ".join(f"{name} ({describe(params, name)})" for name in params.distill) + ".")


def latency_columns(results: dict[str, dict]) -> list[str]:
    """eval.json's CPU latency keys (`latency_ms_batch_<n>`), in the order evaluate measured them."""
    return [key for key in results[TEACHER] if key.startswith("latency_ms_batch_")]


def comparison_table(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """The table of every model's test metrics, formatted: its header and one row of cells per model."""
    columns = latency_columns(results)
    header = ["model", "params", "checkpoint KB", "near-zero weights", "accuracy", "macro-F1", "NLL", "ECE",
              "agreement w/ teacher"]
    header += [f"CPU ms @ batch {column.removeprefix('latency_ms_batch_')}" for column in columns]
    rows = []
    for name, metrics in results.items():
        rows.append([
            name,
            f"{metrics['params']:,}",
            f"{metrics['checkpoint_bytes'] / 1024:.1f}",
            f"{metrics['near_zero_weights']:.1%}",
            f"{metrics['accuracy']:.2%}",
            f"{metrics['macro_f1']:.4f}",
            f"{metrics['nll']:.4f}",
            f"{metrics['ece']:.4f}",
            f"{metrics['agreement_with_teacher']:.2%}",
        ] + [f"{metrics[column]:.3f}" for column in columns])
    return header, rows


def comparisons(results: dict[str, dict], params: Params) -> list[str]:
    """For each distilled student, the line on its gain over its same-budget control (compare)."""
    return [compare(name, results[name], results[BASELINE], results[TEACHER], budget_differences(params, name))
            for name in params.distill]


def compare(name: str, student: dict, baseline: dict, teacher: dict, differences: list[str]) -> str:
    """The line on what distillation changed for student `name`: against the baseline as its same-budget
    control, or, where their budgets differ, the difference named as no measure of distillation."""
    gain = (student["accuracy"] - baseline["accuracy"]) * 100
    change = f"{gain:+.2f} points ({baseline['accuracy']:.2%} -> {student['accuracy']:.2%})"
    size = f"the student has 1/{teacher['params'] / student['params']:.1f} of the teacher's parameters"
    if differences:
        return (f"{name} is not compared at equal budget ({'; '.join(differences)}): its {change} over the baseline "
                f"mixes distillation with the budget; give the student section the same budget for a labels-only "
                f"control. {size[0].upper()}{size[1:]}.")
    recovered = gap_recovered(student["accuracy"], baseline["accuracy"], teacher["accuracy"])
    share = (f"{recovered:.0%} of the teacher's lead ({teacher['accuracy']:.2%}) recovered" if recovered is not None
             else f"the teacher ({teacher['accuracy']:.2%}) has no lead over the control to recover")
    return (f"Distillation ({name}) against the same-budget labels-only control (student_baseline): {change}, "
            f"{share}; {size}.")


def describe(params: Params, student: str) -> str:
    """`0.9 kd (temperature 8) + 0.1 kd (temperature 1), teacher live on mixed views, 45 epochs`: a student's
    weighted loss terms and their options, where its teacher's outputs come from unless stored, and its epochs
    where it sets its own."""
    distilled, views = params.distill[student], params.student_training(student).views
    parts = [describe_losses(params, student)]
    if distilled.teacher != "stored":
        seen = ("the stored images" if views is None or not views.enabled
                else "mixed views" if views.mix.enabled else "fresh views")
        parts.append(f"teacher {distilled.teacher} on {seen}")
    if distilled.train is not None:
        parts.append(f"{distilled.train.epochs} epoch{'s' if distilled.train.epochs != 1 else ''}")
    return ", ".join(parts)


def describe_losses(params: Params, student: str) -> str:
    """`0.9 kd (temperature 8) + 0.1 ce`: a distilled student's weighted loss terms and their options, as
    params.yaml gives them."""
    terms = []
    for term in params.distill[student].losses:
        options = ", ".join(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
                            for key, value in term.options.items())
        terms.append(f"{term.weight:g} {term.method}" + (f" ({options})" if options else ""))
    return " + ".join(terms)
