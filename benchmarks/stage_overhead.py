"""What the pipeline adds to a training stage's wall time: `python -m pipelines.train_student` (params
validation, memory-mapped reads, dvclive logs, an atomic checkpoint) against benchmarks/plain_student.py,
the same training as a plain PyTorch script, in paired runs on the same prepared data.

    python -m benchmarks.stage_overhead [--pairs 5]

Each run is a whole process, start-up and imports included. Prints each pair, the median ratio, and
whether the two wrote the same weights. Runs in a temporary folder with the shipped params.yaml.
"""

from __future__ import annotations

import argparse
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


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    with tempfile.TemporaryDirectory() as folder:
        paths = Paths(Path(folder))
        prepare(params, paths)
        augment(params, paths)
        stage = [sys.executable, "-m", "pipelines.train_student", "--params", str(args.params), "--root", folder]
        plain = [sys.executable, str(PLAIN), folder, str(paths.root / "plain.pt")]
        timed(stage)  # warm the page cache and the Arrow copies once, outside the pairs
        ratios = []
        print("| pair | stage s | plain script s | ratio |\n|---|---|---|---|")
        for pair in range(args.pairs):
            stage_s, plain_s = timed(stage), timed(plain)
            ratios.append(stage_s / plain_s)
            print(f"| {pair + 1} | {stage_s:.2f} | {plain_s:.2f} | {ratios[-1]:.2f} |", flush=True)
        ours = load_checkpoint(paths.model("student_baseline")).state_dict
        theirs = torch.load(paths.root / "plain.pt", weights_only=True)
        same = ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)
    print(f"\nmedian ratio stage / plain script: {statistics.median(ratios):.2f} over {args.pairs} pairs; "
          f"weights {'bit-identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
