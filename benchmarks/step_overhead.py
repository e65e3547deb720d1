"""The engine's host work per training step, with a model so small that the step's own compute is little (a
stand-in for a fast GPU, where the host's work is all that shows): `pipelines.engine.loop.fit` against a plain
PyTorch loop doing the same training, in one process, alternated, on the CPU.

    python -m benchmarks.step_overhead [--pairs 9] [--epochs 10] [--batch-size 16] [--profile]

Both train the shipped baseline student (params.yaml's `student` section: its model, optimizer and schedule;
the epochs and a batch small enough for the host's work to dominate given here; on the images as stored, its
fresh views off) on scikit-learn's 8x8 digits
(bundled with it: nothing is downloaded), validating every epoch, from the same seed: the plain loop takes the
engine's data order, so both end with the same weights bit for bit, which the benchmark checks. `fit` runs as a
stage calls it, its training log written to a folder; resumable saves are off (benchmarks/save_cost.py measures
them). One intra-op thread on both sides, so other processes on the machine perturb both alike. Before any
timing both sides run once untimed: the first torch.optim optimizer imports torch._dynamo (about a second), and
dvclive's and the engine's first imports and calls would count against whichever ran first. `--profile` adds
cProfile's view of one more run of each side: the functions where the engine's extra host time goes, per step.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from pipelines.config import load_params
from pipelines.config.training import TrainingParams
from pipelines.data.images import ImageSet
from pipelines.engine.loop import fit
from pipelines.engine.objective import CrossEntropy
from pipelines.engine.runtime import init_runtime
from pipelines.models import ModelConfig, build_model, count_parameters

from benchmarks.stage_overhead import VIEWS_OFF

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m benchmarks.step_overhead"
TARGET = 0.9  # the target: the engine's steps per second at least this share of the plain loop's
VAL_SHARE = 0.15  # the digits held out for validation (params' split gives val 0.15)
PAIRS, EPOCHS, BATCH_SIZE = 9, 10, 16


def digits() -> tuple[ImageSet, ImageSet]:
    """scikit-learn's 1797 8x8 digits as uint8 images (0-16 scaled to 0-255): training and validation sets."""
    bunch = load_digits()
    images = torch.from_numpy(bunch.images * (255 / 16)).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    names, cut = [str(digit) for digit in range(10)], round(len(labels) * (1 - VAL_SHARE))
    return ImageSet(images[:cut], labels[:cut], names), ImageSet(images[cut:], labels[cut:], names)


def student(training: TrainingParams, train_set: ImageSet, seed: int) -> nn.Module:
    """The model of `training` for the digits, initialized from `seed` (the same weights on both sides)."""
    pixels = train_set.images.float().div(255.0)
    config = ModelConfig(arch=training.model.arch, width=training.model.width, depth=training.model.depth,
                         blocks_per_stage=training.model.blocks_per_stage, dropout=training.model.dropout,
                         in_channels=1, image_size=(8, 8), num_classes=10, pixel_mean=(pixels.mean().item(),),
                         pixel_std=(pixels.std().item(),))
    torch.manual_seed(seed)
    return build_model(config)


def engine_run(model: nn.Module, train_set: ImageSet, val_set: ImageSet, training: TrainingParams,
               seed: int) -> tuple[int, float]:
    """`fit` as a stage calls it, with its training log in a throwaway folder: the optimizer steps taken and the
    last validation loss."""
    with tempfile.TemporaryDirectory() as folder:
        trained = fit(model, train_set, val_set, CrossEntropy(training.regularization.label_smoothing), training,
                      init_runtime("cpu"), seed, Path(folder) / "log")
    return int(trained.metrics["steps"]), trained.metrics["val_loss"]


def plain_run(model: nn.Module, train_set: ImageSet, val_set: ImageSet, training: TrainingParams,
              seed: int) -> tuple[int, float]:
    """The same training as a plain loop: torch.optim's class of the optimizer section, its cosine schedule per
    epoch, the engine's data order (one generator seeded with `seed`), validation every epoch (its loss and
    accuracy read back, as the engine reads them); the steps taken and the last validation loss."""
    assert training.schedule.name == "cosine" and training.schedule.interval == "epoch"
    assert not training.schedule.warmup and training.regularization.weight_decay == 0.0
    epochs, batch = training.train.epochs, training.train.batch_size
    assert isinstance(batch, int)
    weights = [parameter for parameter in model.parameters() if parameter.ndim > 1]
    others = [parameter for parameter in model.parameters() if parameter.ndim <= 1]
    options = training.optimizer.model_dump(exclude={"name"})
    optimizer = getattr(torch.optim, training.optimizer.torch_class)(
        [{"params": weights, "weight_decay": 0.0}, {"params": others, "weight_decay": 0.0}], **options)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs,
                                                          eta_min=training.schedule.min_lr)
    order = torch.Generator().manual_seed(seed)
    images, labels, steps, loss = train_set.images, train_set.labels, 0, 0.0
    assert isinstance(images, torch.Tensor) and isinstance(val_set.images, torch.Tensor)
    for _ in range(epochs):
        model.train()
        permutation = torch.randperm(len(labels), generator=order)
        for start in range(0, len(labels), batch):
            rows = permutation[start : start + batch]
            optimizer.zero_grad(set_to_none=True)
            logits = model(images[rows].float().div_(255.0))
            F.cross_entropy(logits, labels[rows], label_smoothing=training.regularization.label_smoothing).backward()
            optimizer.step()
            steps += 1
        schedule.step()
        model.eval()
        with torch.no_grad():
            logits = model(val_set.images.float().div_(255.0))
            loss, _ = F.cross_entropy(logits, val_set.labels).item(), (logits.argmax(1) == val_set.labels).sum().item()
    return steps, loss


RUNS = {"engine": engine_run, "plain": plain_run}


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread for the block: the tiny model's ops gain nothing from more, and both sides then
    contend alike with whatever else runs on the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def training_of(params_file: Path, epochs: int, batch_size: int) -> tuple[TrainingParams, int]:
    """The student section of `params_file` with `epochs` and `batch_size`, on the images as stored (its fresh
    views off: the plain loop has none), and the params' seed."""
    params = load_params(params_file, VIEWS_OFF)
    train = params.student.train.model_copy(update={"epochs": epochs, "batch_size": batch_size})
    return params.student.model_copy(update={"train": train}), params.seed


def measure(pairs: int, training: TrainingParams, seed: int) -> dict:
    """Each pair's (engine s, plain s) after one untimed run of each, the steps of a run, the model's parameters
    and whether both sides' weights are the same."""
    train_set, val_set = digits()
    models = {}
    timings: list[tuple[float, float]] = []
    for index in range(pairs + 1):
        pair, steps, losses = [], 0, []
        for side, run in RUNS.items():
            models[side] = student(training, train_set, seed)
            with one_thread():
                started = time.perf_counter()
                steps, loss = run(models[side], train_set, val_set, training, seed)
                pair.append(time.perf_counter() - started)
            losses.append(loss)
        if not math.isclose(*losses, rel_tol=1e-4):  # (the weights are compared bit for bit below)
            raise RuntimeError(f"the engine and the plain loop ended at validation losses {losses}: not the same "
                               f"training, so their times do not compare")
        if index:  # the first pair runs every import and first call once, untimed
            timings.append((pair[0], pair[1]))
    ours, theirs = models["engine"].state_dict(), models["plain"].state_dict()
    same = ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)
    return {"pairs": timings, "steps": steps, "parameters": count_parameters(models["plain"]), "same": same,
            "images": len(train_set)}


def profile(training: TrainingParams, seed: int, top: int = 15) -> str:
    """cProfile over one more run of each side: the functions that the engine calls more often than the plain loop
    does, by the host time they take beyond the plain loop's (their own time, outside the functions they call),
    per step, as a markdown table."""
    train_set, val_set = digits()
    per_step = {}
    for side, run in RUNS.items():
        profiler = cProfile.Profile()
        with one_thread():
            run(student(training, train_set, seed), train_set, val_set, training, seed)  # imports, first calls
            model = student(training, train_set, seed)
            profiler.enable()
            steps, _ = run(model, train_set, val_set, training, seed)
            profiler.disable()
        stats = pstats.Stats(profiler).stats
        per_step[side] = {where: (calls / steps, own / steps * 1e6, cumulative / steps * 1e6)
                          for where, (_, calls, own, cumulative, _) in stats.items()}
    engine, plain = per_step["engine"], per_step["plain"]
    # The engine's own work: functions the plain loop calls less often or never (the model's layers and the
    # optimizer's kernels, called as often on both sides, differ only by noise), by their extra own time.
    extra = {where: (calls, own - plain.get(where, (0, 0.0, 0.0))[1], cumulative)
             for where, (calls, own, cumulative) in engine.items() if calls > plain.get(where, (0.0,))[0] + 1e-3}
    lines = ["| function | calls/step | extra own µs/step | cumulative µs/step |", "|---|---|---|---|"]
    for (file, line, name), (calls, own, cumulative) in sorted(extra.items(), key=lambda item: -item[1][1])[:top]:
        lines.append(f"| {short(file)}:{line} {name} | {calls:.2g} | {own:.1f} | {cumulative:.1f} |")
    return "\n".join(lines)


def short(file: str) -> str:
    """A profiled function's file: relative to the project or to site-packages, a standard module by its name."""
    if "/site-packages/" in file:
        return file.split("/site-packages/")[-1]
    return str(Path(file).relative_to(ROOT)) if file.startswith(str(ROOT)) else Path(file).name


def section(pairs: int = PAIRS, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE,
            params_file: Path = ROOT / "params.yaml") -> str:
    """The benchmark as a markdown section: what ran, each pair, the median ratio against the target."""
    training, seed = training_of(params_file, epochs, batch_size)
    result = measure(pairs, training, seed)
    ratios = [plain / engine for engine, plain in result["pairs"]]  # engine steps/s over the plain loop's
    steps = result["steps"]
    rows = "\n".join(f"| {index} | {steps / engine:.0f} | {steps / plain:.0f} | {ratio:.3f} |"
                     for index, ((engine, plain), ratio) in enumerate(zip(result["pairs"], ratios), 1))
    median = statistics.median(ratios)
    return (
        "## Step overhead: the engine's host work per step\n\n"
        f"`{COMMAND}`: `fit` against a plain PyTorch loop doing the same training, on the CPU, one thread, in one "
        f"process, alternated, {pairs} pairs after one untimed pair: the shipped baseline student "
        f"({training.model.arch}, {result['parameters']:,} parameters) on {result['images']:,} 8x8 digits, batch "
        f"{batch_size} (small, so that the step's host work dominates: a stand-in for a fast GPU), "
        f"{training.optimizer.name}, {epochs} epochs ({steps} steps) with validation every epoch; the engine writes "
        f"its training log, without resumable saves. Weights {'bit-identical' if result['same'] else 'DIFFERENT'} "
        "on both sides.\n\n"
        "| pair | engine steps/s | plain loop steps/s | engine / plain |\n|---|---|---|---|\n"
        f"{rows}\n\n"
        f"Median engine / plain: {median:.3f} (target: at least {TARGET}, {'met' if median >= TARGET else 'NOT met'}"
        ").\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=PAIRS, help="timed pairs (engine, plain loop), after one untimed")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one more run of each side: where the engine's extra host time goes")
    args = parser.parse_args(argv)
    print(section(args.pairs, args.epochs, args.batch_size, args.params))
    if args.profile:
        print("Where the engine's host time goes beyond the plain loop's, per step (cProfile, whose own cost "
              "inflates every figure):\n")
        print(profile(*training_of(args.params, args.epochs, args.batch_size)))


if __name__ == "__main__":
    main()
