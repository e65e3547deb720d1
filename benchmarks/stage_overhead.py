"""What the pipeline adds to a training stage's wall time: `python -m pipelines.train_student` (params
validation, memory-mapped reads, the training log, an atomic checkpoint) against benchmarks/plain_student.py,
the same training as a plain PyTorch script, in paired runs on the same prepared data. Both train on the transfer
set as stored: the shipped student's fresh views are turned off (`VIEWS_OFF`), since the plain script has none.

    python -m benchmarks.stage_overhead [--pairs 9]

Each run is a whole process, start-up and imports included. Prints each pair, the median ratios against the
issue's targets (the whole process, and the training time alone), and whether the two wrote the same weights
(`section()`: the same as markdown, for docs/benchmarks.md). Runs in a temporary folder with the shipped
params.yaml.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import yaml

from pipelines.augment import augment
from pipelines.config import load_params
from pipelines.config.params import read_raw_params, with_overrides
from pipelines.core.paths import Paths
from pipelines.engine.checkpoint import load_checkpoint
from pipelines.prepare import prepare

PLAIN = Path(__file__).with_name("plain_student.py")
COMMAND = "python -m benchmarks.stage_overhead"
TARGET = 1.05  # the target: the stage's whole-process time at most this many times the plain script's
TRAIN_TARGET = 1.02  # and its training time alone (the epochs, as each side times them) at most this many times
VIEWS_OFF = {"student.views": None}  # the shipped student on the stored images, as the plain script trains it


class Run(NamedTuple):
    seconds: float  # the whole process
    train_seconds: float  # its epochs alone


def timed(command: list[str], train_seconds: Callable[[str], float]) -> Run:
    # One intra-op thread on both sides (as benchmarks/step_overhead.py): with one per core, whatever else runs
    # on the machine stalls a thread that every operation then waits for, and swamps the differences measured.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    started = time.perf_counter()
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return Run(time.perf_counter() - started, train_seconds(output))


def measure(pairs: int, params_file: Path) -> tuple[list[tuple[Run, Run]], bool]:
    """(stage, plain script) of each pair, after one untimed stage run, and whether the two wrote the same
    weights. The stage's training time is its training log's `train_seconds`; the script prints its own."""
    params = load_params(params_file, VIEWS_OFF)
    with tempfile.TemporaryDirectory() as folder:
        paths = Paths(Path(folder))
        prepare(params, paths)
        augment(params, paths)
        stage_params = paths.root / "params.yaml"
        stage_params.write_text(yaml.safe_dump(with_overrides(read_raw_params(params_file), VIEWS_OFF)))
        stage = [sys.executable, "-m", "pipelines.train_student", "--params", str(stage_params), "--root", folder]
        plain = [sys.executable, str(PLAIN), folder, str(paths.root / "plain.pt")]
        log = paths.training_log("student_baseline") / "metrics.json"

        def stage_train(_: str) -> float:
            return float(json.loads(log.read_text())["train_seconds"])

        def plain_train(output: str) -> float:
            return float(output.rsplit("train_seconds ", 1)[1].split()[0])

        timed(stage, stage_train)  # warm the page cache and the Arrow copies once, outside the pairs
        timings = []
        for pair in range(pairs):
            timings.append((timed(stage, stage_train), timed(plain, plain_train)))
            print(f"pair {pair + 1}: stage {timings[-1][0].seconds:.2f} s, plain script {timings[-1][1].seconds:.2f} s",
                  file=sys.stderr, flush=True)
        ours = load_checkpoint(paths.model("student_baseline")).state_dict
        theirs = torch.load(paths.root / "plain.pt", weights_only=True)
        same = ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)
    return timings, same


def section(pairs: int = 9, params_file: Path = Path("params.yaml")) -> str:
    """The benchmark as a markdown section: each pair, the median ratios against the targets, the weights."""
    timings, same = measure(pairs, params_file)
    ratios = [stage.seconds / plain.seconds for stage, plain in timings]
    train_ratios = [stage.train_seconds / plain.train_seconds for stage, plain in timings]
    rows = "\n".join(f"| {index} | {stage.seconds:.2f} | {plain.seconds:.2f} | {ratio:.2f} | "
                     f"{stage.train_seconds:.2f} | {plain.train_seconds:.2f} | {train_ratio:.3f} |"
                     for index, ((stage, plain), ratio, train_ratio)
                     in enumerate(zip(timings, ratios, train_ratios), 1))
    median, train_median = statistics.median(ratios), statistics.median(train_ratios)
    return (
        "## Stage overhead: a training stage against a plain script\n\n"
        f"`{COMMAND}`: `python -m pipelines.train_student` against benchmarks/plain_student.py, the same training "
        f"as a plain PyTorch script, whole processes (start-up and imports in), alternated, {pairs} pairs after one "
        f"untimed stage run, on the data of {params_file} prepared in a temporary folder; {os.cpu_count()} CPU "
        "cores, one intra-op thread per side. Training time: the epochs alone (validation included), from the "
        "stage's training log and as the script times them.\n\n"
        "| pair | stage s | plain script s | stage / plain | stage training s | script training s | training ratio |\n"
        "|---|---|---|---|---|---|---|\n"
        f"{rows}\n\n"
        f"Median stage / plain script: {median:.2f} (target: at most {TARGET}, "
        f"{'met' if median <= TARGET else 'NOT met'}); training time alone: {train_median:.3f} (target: at most "
        f"{TRAIN_TARGET}, {'met' if train_median <= TRAIN_TARGET else 'NOT met'}); weights "
        f"{'bit-identical' if same else 'DIFFERENT'}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    print(section(args.pairs, args.params))


if __name__ == "__main__":
    main()
