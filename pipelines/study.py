"""The optimization study: one model trained under every setting of `study` in params.yaml, on the same
prepared data, model budget (epochs) and seed, then one table and one convergence plot comparing them.

    python -m pipelines.study run SETTING             # train one setting: study/runs/SETTING/ (dvclive), SETTING.json
    python -m pipelines.study summarize [SETTING ...] # study/results.md, results.json, convergence.png, dvc.yaml

Each setting runs in its own process (flows/study.py starts them one after another), so its peak memory
and wall time are its own.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import resource
import time
from pathlib import Path

import torch
import yaml
from matplotlib import colormaps
from matplotlib.figure import Figure  # the object API draws to files without a display backend

from pipelines.atomic import atomic_path, write_json, write_text
from pipelines.config import PARAMS_FILE, Params, ParamsError
from pipelines.data import open_image_set
from pipelines.models import build_model, model_config
from pipelines.paths import Paths
from pipelines.predict import predict_logits
from pipelines.runtime import init_runtime, shutdown
from pipelines.stage import params_or_exit
from pipelines.train import fit

log = logging.getLogger(__name__)

TABLE_COLUMNS = {
    "setting": "setting",
    "optimizer": "optimizer",
    "schedule": "schedule",
    "batch_size": "batch",
    "val_accuracy": "val acc",
    "test_accuracy": "test acc",
    "steps": "steps",
    "steps_to_target": "steps to target",
    "wall_seconds": "wall s",
    "peak_rss_mb": "peak RSS MB",
}


def chosen_settings(params: Params, names: list[str] | None) -> list[str]:
    """`names`, or every setting when none are given; ParamsError, listing the valid ones, for an unknown name."""
    available = list(params.study_settings())
    unknown = [name for name in names or [] if name not in available]
    if unknown:
        raise ParamsError(f"unknown study setting(s) {', '.join(unknown)}; valid: {', '.join(available)}")
    return names or available


def run_setting(params: Params, paths: Paths, name: str) -> dict:
    """Train the study's model under setting `name` (one of params.study_settings()); write and return its row."""
    training = params.study_settings()[name]
    runtime = init_runtime(params.device)
    card = json.loads(paths.card.read_text())
    transfer, val, test = (open_image_set(path, paths.arrow_cache) for path in (paths.transfer, paths.split("val"), paths.split("test")))
    torch.manual_seed(params.seed)
    model = build_model(model_config(training.model, card))
    # The first optimizer of a process imports torch._dynamo (about a second): do that outside the timing.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    started = time.perf_counter()
    kept, metrics = fit(model, transfer, val, training, runtime, params.seed, paths.study_run(name))
    wall_seconds = time.perf_counter() - started

    test_logits = predict_logits(kept, test.images, runtime.device)
    row = {
        "setting": name,
        "optimizer": training.optimizer.name,
        "schedule": training.schedule.name,
        "batch_size": training.train.batch_size,
        "epochs": metrics["epochs"],
        "steps": metrics["steps"],
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy": float((test_logits.argmax(1) == test.labels).float().mean()),
        "steps_to_target": steps_to_reach(paths.study_run(name), params.study.target_accuracy),
        "wall_seconds": wall_seconds,
        # ru_maxrss is in KiB on Linux: the peak resident memory of this process, the whole run included.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if runtime.device.type == "cuda":
        row["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if runtime.is_main:
        write_json(paths.study_result(name), row)
    shutdown(runtime)
    return row


def read_curve(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) rows of one metric from a dvclive folder."""
    with open(run_dir / "plots" / "metrics" / f"{metric}.tsv", newline="") as file:
        return [(int(row["step"]), float(row[metric])) for row in csv.DictReader(file, delimiter="\t")]


def steps_to_reach(run_dir: Path, target: float) -> int | None:
    """Optimizer steps taken when validation accuracy first reached `target` (None if it never did)."""
    for step, accuracy in read_curve(run_dir, "val_accuracy"):
        if accuracy >= target:
            return step + 1
    return None


def summarize(params: Params, paths: Paths, names: list[str] | None = None) -> list[dict]:
    """Collect the settings' results into the study table, the convergence plot and DVC plot definitions."""
    names = names or list(params.study_settings())
    missing = [name for name in names if not paths.study_result(name).exists()]
    if missing:
        raise FileNotFoundError(f"no result yet for study setting(s) {', '.join(missing)}: run them first")
    rows = [json.loads(paths.study_result(name).read_text()) for name in names]
    write_json(paths.study / "results.json", rows)
    write_text(paths.study / "results.md", render_table(rows, params))
    plot_convergence(paths, names, paths.study / "convergence.png")
    write_dvc_plots(paths, names)
    return rows


def render_table(rows: list[dict], params: Params) -> str:
    target = params.study.target_accuracy
    lines = [
        f"Study of `{params.study.model}` (seed {params.seed}): same data, model and epochs for every setting; "
        f"steps to target = optimizer steps until validation accuracy first reached {target:.0%} (- = never).",
        "",
        "| " + " | ".join(TABLE_COLUMNS.values()) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    for row in rows:
        cells = []
        for key in TABLE_COLUMNS:
            value = row[key]
            if key.endswith("accuracy"):
                cells.append(f"{value:.2%}")
            elif isinstance(value, float):
                cells.append(f"{value:.1f}")
            else:
                cells.append("-" if value is None else str(value))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "summarize"])
    parser.add_argument("settings", nargs="*", metavar="SETTING", help="run: one setting; summarize: default all")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    parser.add_argument("--root", type=Path, default=Path("."))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = params_or_exit(args.params)
    try:
        chosen_settings(params, args.settings)
    except ParamsError as error:
        parser.error(str(error))
    if args.command == "run":
        if len(args.settings) != 1:
            parser.error("run takes exactly one setting name")
        run_setting(params, Paths(args.root), args.settings[0])
    else:
        summarize(params, Paths(args.root), args.settings or None)


if __name__ == "__main__":
    main()
