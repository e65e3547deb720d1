"""The optimization study: one model trained under every setting of `study` in params.yaml, on the same
prepared data and seed, then one table and one convergence plot comparing them. A setting keeps the base
model and budget (epochs) unless it replaces them, and the whole transfer set unless it names `train_images`.

    python -m pipelines.study run SETTING             # train one setting: study/runs/SETTING/ (dvclive), SETTING.json
    python -m pipelines.study summarize [SETTING ...] # study/results.md, results.json, convergence.png, dvc.yaml

Each setting runs in its own process (flows/study.py starts them one after another), so its peak memory
and wall time are its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.config import PARAMS_FILE, Params, ParamsError
from pipelines.core.paths import Paths
from pipelines.core.stage import params_or_exit

if TYPE_CHECKING:  # torch and the data modules load only when a setting trains
    from pipelines.data.images import ImageSet

log = logging.getLogger(__name__)


def chosen_settings(params: Params, names: list[str] | None) -> list[str]:
    """`names`, or every setting when none are given; ParamsError, listing the valid ones, for an unknown name."""
    available = list(params.study_settings())
    unknown = [name for name in names or [] if name not in available]
    if unknown:
        raise ParamsError(f"unknown study setting(s) {', '.join(unknown)}; valid: {', '.join(available)}")
    return names or available


def drawn_images(images: ImageSet, count: int | None, seed: int, key: str) -> ImageSet:
    """`count` images of `images` drawn at random with `seed`, in their order and read into memory (all of
    `images`, as they are, when `count` is None); ParamsError naming `key`, the setting's, when there are fewer."""
    import torch

    from pipelines.data.images import ImageSet

    if count is None:
        return images
    if count > len(images):
        raise ParamsError(f"{key}: {count} images, but the transfer set has only {len(images)}; give at most "
                          f"{len(images)}, or null for all of them")
    rows = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    return ImageSet(images.images[rows], images.labels[rows], images.class_names,
                    {column: values[rows] for column, values in images.columns.items()})


def run_setting(params: Params, paths: Paths, name: str) -> dict:
    """Train the study's model under setting `name` (one of params.study_settings()); write and return its row."""
    import torch

    from pipelines.core.atomic import write_json
    from pipelines.data.card import read_card
    from pipelines.data.images import open_image_set
    from pipelines.engine.inference import predict_logits
    from pipelines.engine.loop import fit
    from pipelines.engine.objective import CrossEntropy
    from pipelines.engine.runtime import init_runtime, shutdown
    from pipelines.engine.training import model_config
    from pipelines.evaluation.study import steps_until
    from pipelines.models import build_model

    training = params.study_settings()[name]
    distributed = params.distributed_for(training)
    runtime = init_runtime(params.device, distributed.timeout_s, params.speed)
    card = read_card(paths.card)
    transfer, val, test = (open_image_set(path, paths.arrow_cache)
                           for path in (paths.transfer, paths.split("val"), paths.split("test")))
    transfer = drawn_images(transfer, params.study.train_images(name), params.seed,
                            f"study.extra.{name}.train_images")
    torch.manual_seed(params.seed)
    model = build_model(model_config(training.model, card))
    # The first optimizer of a process imports torch._dynamo (about a second): do that outside the timing.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    started = time.perf_counter()
    objective = CrossEntropy(training.regularization.label_smoothing)
    trained = fit(model, transfer, val, objective, training, runtime, params.seed, paths.study_run(name), distributed)
    wall_seconds = time.perf_counter() - started

    test_logits = predict_logits(trained.model, test.images, runtime.device)
    row = {
        "setting": name,
        "optimizer": training.optimizer.name,
        "schedule": training.schedule.name,
        "batch_size": training.train.batch_size,
        "train_images": len(transfer),
        "epochs": trained.metrics["epochs"],
        "steps": trained.metrics["steps"],
        "train_loss": trained.metrics["train_loss"],
        "val_accuracy": trained.metrics["val_accuracy"],
        "test_accuracy": float((test_logits.argmax(1) == test.labels).float().mean()),
        "steps_to_target": steps_until(paths.study_run(name), "val_accuracy",
                                       lambda accuracy: accuracy >= params.study.target_accuracy),
        "steps_to_loss_target": steps_until(paths.study_run(name), "train_loss",
                                            lambda loss: loss < params.study.target_train_loss),
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


def summarize(params: Params, paths: Paths, names: list[str] | None = None) -> list[dict]:
    """Collect the settings' results into the study table, the convergence plot and DVC plot definitions."""
    from pipelines.core.atomic import write_json, write_text
    from pipelines.evaluation.study import plot_convergence, render_table, write_dvc_plots

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
        try:
            run_setting(params, Paths(args.root), args.settings[0])
        except ParamsError as error:  # a setting that does not fit the data: the message, not a traceback
            parser.error(f"{args.params}: {error}")
    else:
        summarize(params, Paths(args.root), args.settings or None)


if __name__ == "__main__":
    main()
