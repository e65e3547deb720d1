"""What the pipeline adds to a training stage's wall time: `python -m pipelines.train_student` (params
validation, memory-mapped reads, dvclive logs, an atomic checkpoint) against benchmarks/plain_student.py,
the same training as a plain PyTorch script, in paired runs on the same prepared data.

    python -m benchmarks.stage_overhead [--pairs 5]

Each run is a whole process, start-up and imports included. Prints each pair, the median ratio against the
issue's target, and whether the two wrote the same weights (`section()`: the same as markdown, for
docs/benchmarks.md). Runs in a temporary folder with the shipped params.yaml.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipelines.augment import augment
from pipelines.config import load_params
from pipelines.core.paths import Paths
from pipelines.engine.checkpoint import load_checkpoint
from pipelines.prepare import prepare

PLAIN = Path(__file__).with_name("plain_student.py")
COMMAND = "python -m benchmarks.stage_overhead"
TARGET = 1.05  # the target: the stage's whole-process time at most this many times the plain script's


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def measure(pairs: int, params_file: Path) -> tuple[list[tuple[float, float]], bool]:
    """(stage s, plain script s) of each pair, after one untimed stage run, and whether the two wrote the same
    weights."""
    params = load_params(params_file)
    with tempfile.TemporaryDirectory() as folder:
        paths = Paths(Path(folder))
        prepare(params, paths)
        augment(params, paths)
        stage = [sys.executable, "-m", "pipelines.train_student", "--params", str(params_file), "--root", folder]
        plain = [sys.executable, str(PLAIN), folder, str(paths.root / "plain.pt")]
        timed(stage)  # warm the page cache and the Arrow copies once, outside the pairs
        timings = []
        for pair in range(pairs):
            timings.append((timed(stage), timed(plain)))
            print(f"pair {pair + 1}: stage {timings[-1][0]:.2f} s, plain script {timings[-1][1]:.2f} s",
                  file=sys.stderr, flush=True)
        ours = load_checkpoint(paths.model("student_baseline")).state_dict
        theirs = torch.load(paths.root / "plain.pt", weights_only=True)
        same = ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)
    return timings, same


def section(pairs: int = 5, params_file: Path = Path("params.yaml")) -> str:
    """The benchmark as a markdown section: each pair, the median ratio against the target, the weights."""
    timings, same = measure(pairs, params_file)
    ratios = [stage / plain for stage, plain in timings]
    rows = "\n".join(f"| {index} | {stage:.2f} | {plain:.2f} | {ratio:.2f} |"
                     for index, ((stage, plain), ratio) in enumerate(zip(timings, ratios), 1))
    median = statistics.median(ratios)
    return (
        "## Stage overhead: a training stage against a plain script\n\n"
        f"`{COMMAND}`: `python -m pipelines.train_student` against benchmarks/plain_student.py, the same training "
        f"as a plain PyTorch script, whole processes (start-up and imports in), alternated, {pairs} pairs after one "
        f"untimed stage run, on the data of {params_file} prepared in a temporary folder; {os.cpu_count()} CPU "
        "cores.\n\n"
        "| pair | stage s | plain script s | stage / plain |\n|---|---|---|---|\n"
        f"{rows}\n\n"
        f"Median stage / plain script: {median:.2f} (target: at most {TARGET}, "
        f"{'met' if median <= TARGET else 'NOT met'}); weights {'bit-identical' if same else 'DIFFERENT'}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    print(section(args.pairs, args.params))


if __name__ == "__main__":
    main()
