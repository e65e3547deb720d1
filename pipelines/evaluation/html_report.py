"""The HTML report (reports/report.html): one self-contained page, its figures inline PNGs and its style inline,
so it opens anywhere offline and fetches nothing. It shows what the markdown report says (the comparison table,
each distilled student against its same-budget control: reused from pipelines/evaluation/report.py) and the
pictures: training curves and loss terms, accuracy against size and latency, per-class F1, confusion matrices,
agreement with the teacher; then the params that differ between the models and the dataset card.

Everything comes from records: metrics/eval.json, the training stages' dvclive logs and the dataset card."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from matplotlib.figure import Figure

from pipelines.config import Params
from pipelines.core.errors import DataError
from pipelines.core.paths import Paths
from pipelines.data.card import DatasetCard, read_card
from pipelines.evaluation.figures import (DPI, Curves, agreement, confusion_matrices, loss_term_curves, per_class_f1,
                                           png, tradeoffs, training_curves)
from pipelines.evaluation.report import (BASELINE, TEACHER, comparison_table, comparisons, describe_losses,
                                          summary)
from pipelines.evaluation.study import read_curve

STYLE = """
body { font-family: "DejaVu Sans", Arial, sans-serif; color: #222; background: #fff; margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 2em; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child, table.text td { text-align: left; }
thead th { background: #f2f2f2; }
figure { margin: 12px 0 24px; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; margin-top: 4px; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def read_training_log(folder: Path) -> Curves:
    """Every per-epoch metric of one dvclive folder (pipelines/engine/training_log.py) against its epochs: each
    is logged at its epoch's last optimizer step, which `epoch.tsv` maps to the epoch."""
    metrics = folder / "plots" / "metrics"
    if not (metrics / "epoch.tsv").is_file():
        raise DataError(f"{folder}: no training log (plots/metrics/epoch.tsv); run the stage that trains this "
                        f"model (dvc repro) first")
    epoch_of = {step: int(epoch) for step, epoch in read_curve(folder, "epoch")}
    curves = {}
    for path in sorted(metrics.glob("*.tsv")):
        if path.stem in ("epoch", "lr"):  # the epochs themselves; the learning rate, logged every step
            continue
        rows = read_curve(folder, path.stem)
        curves[path.stem] = ([epoch_of[step] for step, _ in rows], [value for _, value in rows])
    return curves


def read_inputs(paths: Paths, params: Params) -> tuple[dict[str, dict], dict[str, Curves], DatasetCard]:
    """What the page is drawn from: eval.json, each model's training log, the dataset card."""
    results = json.loads(paths.eval_metrics.read_text())
    logs = {name: read_training_log(paths.training_log(name)) for name in params.model_names}
    return results, logs, read_card(paths.card)


def render_html(results: dict[str, dict], logs: dict[str, Curves], card: DatasetCard, params: Params) -> str:
    """The page of `results` (eval.json), `logs` (model -> its training curves) and `card`, described with
    `params`."""
    header, rows = comparison_table(results)
    body = [
        "<h1>Distillation report</h1>",
        f"<p>{markdown_code(summary(results, params))}</p>",
        section("comparison", "Models compared on the test split", [
            table(header, rows),
            "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in comparisons(results, params)) + "</ul>",
        ]),
        section("training", "Training", [
            figure("training-curves", training_curves(logs),
                   "Training and validation curves of every model (dvclive logs)."),
            *(figure(f"loss-terms-{name}", loss_term_curves(name, logs[name]),
                     f"{name}: each loss term, the weighted objective and the validation loss, per epoch.")
              for name in params.distill),
        ]),
        section("tradeoffs", "Accuracy against size and latency", [
            figure("tradeoffs", tradeoffs(results),
                   "Test accuracy against parameters and against CPU latency (log scales), as evaluate measured."),
        ]),
        section("per-class", "Per-class F1", [
            figure(f"per-class-f1-{name}", per_class_f1(results, name),
                   f"{name} against the labels-only {BASELINE} and the teacher, class by class.")
            for name in params.distill
        ]),
        section("confusion", "Confusion matrices", [
            figure("confusion", confusion_matrices(results),
                   "Rows: the actual class; columns: the predicted one; shade: the share of the row."),
        ]),
        section("agreement", "Agreement with the teacher", [
            figure("agreement", agreement(results),
                   "The share of test images on which each model predicts what the teacher predicts."),
        ]),
        section("params", "Params that differ between the models", [differing_params(params)]),
        section("dataset", "Dataset", dataset_card(card)),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>Distillation report: {html.escape(params.data.source)}</title>\n<style>{STYLE}</style>\n"
            "</head>\n<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


def section(anchor: str, title: str, parts: list[str]) -> str:
    return f"<section id=\"{anchor}\">\n<h2>{html.escape(title)}</h2>\n" + "\n".join(parts) + "\n</section>"


def figure(anchor: str, drawn: Figure, caption: str) -> str:
    """A figure inline: its PNG as a data URI, at its own pixel size."""
    width, height = (round(size * DPI) for size in drawn.get_size_inches())
    data = base64.b64encode(png(drawn)).decode("ascii")
    return (f"<figure id=\"figure-{anchor}\"><img src=\"data:image/png;base64,{data}\" width=\"{width}\" "
            f"height=\"{height}\" alt=\"{html.escape(caption)}\"><figcaption>{html.escape(caption)}</figcaption>"
            "</figure>")


def table(header: list[str], rows: list[list[str]], numbers: bool = True) -> str:
    """A table of escaped cells; the columns after the first right-aligned where they hold `numbers`."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    kind = "" if numbers else " class=\"text\""
    return f"<table{kind}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_code(text: str) -> str:
    """`text` escaped, its `code` spans as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def differing_params(params: Params) -> str:
    """The settings of each model (its params.yaml section, a distilled student's with what it replaces) where
    they are not all the same: one row per dotted key."""
    settings = {TEACHER: params.teacher, BASELINE: params.student,
                **{name: params.student_training(name) for name in params.distill}}
    flat = {}
    for name, training in settings.items():
        distilled = params.distill.get(name)
        flat[name] = {"losses": describe_losses(params, name) if distilled else "labels only (cross-entropy)",
                      "teacher outputs": distilled.teacher if distilled else "-",
                      **flatten(training.model_dump(mode="json"))}
    keys = list(dict.fromkeys(key for values in flat.values() for key in values))
    rows = [[key, *(flat[name].get(key, "-") for name in flat)] for key in keys
            if len({flat[name].get(key, "-") for name in flat}) > 1]
    return table(["param", *flat], rows)


def flatten(value: object, prefix: str = "") -> dict[str, str]:
    """A nested params dump as dotted keys and their values written out (lists as JSON)."""
    if isinstance(value, dict):
        return {key: text for name, item in value.items() for key, text in flatten(item, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): "-" if value is None else json.dumps(value) if isinstance(value, list) else str(value)}


def dataset_card(card: DatasetCard) -> list[str]:
    """The dataset card (data/prepared/card.json) as tables: what the data is, then its splits by class."""
    splits = card.splits
    about = [
        ["source", card.source],
        ["image shape (C, H, W)", " x ".join(map(str, card.image_shape))],
        ["classes", str(card.num_classes)],
        ["pixel mean (per channel)", ", ".join(f"{value:.4f}" for value in card.pixel_mean)],
        ["pixel std (per channel)", ", ".join(f"{value:.4f}" for value in card.pixel_std)],
        *([f"{name} split", f"{split.count} images, sha256 {split.sha256[:16]}…"] for name, split in splits.items()),
    ]
    by_class = [[class_name, *(str(split.per_class[class_name]) for split in splits.values())]
                for class_name in card.class_names]
    return [table(["card", "value"], about, numbers=False), table(["class", *splits], by_class)]
