"""Stage `evaluate`: teacher, baseline student and distilled student on the test split.

Writes metrics/eval.json ({"teacher": {...}, "student_baseline": {...}, "student_kd": {...}}), one
confusion-matrix plot file per model for `dvc plots`, and reports/report.md comparing the three.
"""

from __future__ import annotations

import logging

import torch

from pipelines.atomic import write_json, write_text
from pipelines.checkpoint import load_model
from pipelines.config import Params
from pipelines.data import open_image_set
from pipelines.metrics import classification_metrics, latency_ms, near_zero_fraction
from pipelines.models import count_parameters
from pipelines.paths import MODELS, Paths
from pipelines.stage import run_stage
from pipelines.predict import predict_logits

log = logging.getLogger(__name__)


def evaluate(params: Params, paths: Paths = Paths()) -> dict[str, dict]:
    """Evaluate the three models on the CPU; return what eval.json holds."""
    test = open_image_set(paths.split("test"), paths.arrow_cache)
    settings = params.evaluate
    results: dict[str, dict] = {}
    predictions = {}
    for name in MODELS:
        model, _ = load_model(paths.model(name))
        logits = predict_logits(model, test.images, torch.device("cpu"), settings.batch_size)
        predictions[name] = logits.argmax(1)
        metrics = classification_metrics(logits, test.labels, test.class_names, settings.calibration_bins)
        metrics["agreement_with_teacher"] = float((predictions[name] == predictions["teacher"]).float().mean())
        metrics["params"] = count_parameters(model)
        metrics["near_zero_weights"] = near_zero_fraction(model, settings.near_zero_threshold)
        metrics["checkpoint_bytes"] = paths.model(name).stat().st_size
        for batch_size in settings.latency_batch_sizes:
            metrics[f"latency_ms_batch_{batch_size}"] = latency_ms(
                model, test.image_shape, batch_size, settings.latency_repeats
            )
        results[name] = metrics
        log.info("%s: accuracy %.4f, %d parameters", name, metrics["accuracy"], metrics["params"])

    for name in MODELS:
        rows = [
            {"actual": test.class_names[actual], "predicted": test.class_names[predicted]}
            for actual, predicted in zip(test.labels.tolist(), predictions[name].tolist())
        ]
        write_json(paths.confusion_plot(name), rows)
    write_json(paths.eval_metrics, results)
    write_text(paths.report, render_report(results, params, len(test)))
    return results


def render_report(results: dict[str, dict], params: Params, test_count: int) -> str:
    """The markdown report: one table comparing the models, the distillation gain, per-class F1."""
    latency_columns = [f"latency_ms_batch_{size}" for size in params.evaluate.latency_batch_sizes]
    header = ["model", "params", "checkpoint KB", "near-zero weights", "accuracy", "macro-F1", "NLL", "ECE",
              "agreement w/ teacher"]
    header += [f"CPU ms @ batch {size}" for size in params.evaluate.latency_batch_sizes]
    lines = [
        "# Distillation report",
        "",
        f"Dataset `{params.data.source}`, {test_count} test images; distillation: {params.distill.method}, "
        f"T = {params.distill.temperature:g}, alpha = {params.distill.alpha:g}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, metrics in results.items():
        cells = [
            name,
            f"{metrics['params']:,}",
            f"{metrics['checkpoint_bytes'] / 1024:.1f}",
            f"{metrics['near_zero_weights']:.1%}",
            f"{metrics['accuracy']:.2%}",
            f"{metrics['macro_f1']:.4f}",
            f"{metrics['nll']:.4f}",
            f"{metrics['ece']:.4f}",
            f"{metrics['agreement_with_teacher']:.2%}",
        ] + [f"{metrics[column]:.3f}" for column in latency_columns]
        lines.append("| " + " | ".join(cells) + " |")

    teacher, baseline, distilled = (results[name] for name in MODELS)
    gain = (distilled["accuracy"] - baseline["accuracy"]) * 100
    lines += [
        "",
        f"Distillation changes the student's test accuracy by {gain:+.2f} points "
        f"({baseline['accuracy']:.2%} -> {distilled['accuracy']:.2%}); the student has "
        f"1/{teacher['params'] / distilled['params']:.1f} of the teacher's parameters.",
        "",
        "Per-class F1:",
        "",
        "| class | " + " | ".join(results) + " |",
        "|" + "---|" * (len(results) + 1),
    ]
    for class_name in teacher["per_class"]:
        cells = [f"{results[name]['per_class'][class_name]['f1']:.3f}" for name in results]
        lines.append(f"| {class_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_stage(evaluate)
