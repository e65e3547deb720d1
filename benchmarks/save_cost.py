"""What resumable saves cost a training stage: the shipped baseline student trained with `resume.mode: auto`
and the shipped `resume` section (a save once `every_minutes` have passed, in the background), and with a save
at every reading of the clock (`every_minutes: 0`: every 10th step and every epoch end), on the transfer set as
stored (its fresh views off, as in benchmarks/stage_overhead.py), against the same
training with `resume.mode: never`, alternated in one process, on the CPU. The second gives the cost of one
save, and so the share of training time the shipped interval spends on saves however long the run.

    python -m benchmarks.save_cost [--pairs 9]

Both train `pipelines.train_student`'s stage function (the whole stage: fit, its saves and their removal, the
checkpoint) on scikit-learn's built-in 8x8 digits, prepared and augmented once in a temporary folder with the
shipped params.yaml, as benchmarks/stage_overhead.py does. One run of each, untimed, comes first (imports and
first calls); then each pair runs all three, the order reversed every other pair. Prints each pair, the median
ratio of the times with saves to those without, the cost of one save, and whether all wrote the same weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pipelines.augment import augment
from pipelines.config import Params, load_params
from pipelines.core.paths import Paths
from pipelines.engine.checkpoint import load_checkpoint
from pipelines.engine.resume.clock import CLOCK_STEPS
from pipelines.prepare import prepare
from pipelines.train_student import train_student

from benchmarks.stage_overhead import VIEWS_OFF

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m benchmarks.save_cost"
TARGET = 1.02  # the target: the default saves cost at most 2% of the training time
PAIRS = 9
MODES = ("auto", "never", "every")  # the shipped params, no saves, a save at every reading of the clock


def timed(params: Params, paths: Paths) -> tuple[float, dict[str, torch.Tensor]]:
    """The stage's wall time, and the weights it wrote."""
    started = time.perf_counter()
    train_student(params, paths)
    seconds = time.perf_counter() - started
    return seconds, load_checkpoint(paths.model("student_baseline")).state_dict


def saves_at_every_reading(epochs: int, steps: int) -> int:
    """The saves of a run of `epochs` epochs and `steps` optimizer steps with `every_minutes: 0`: one at each
    epoch end, and one after every 10th step that does not end an epoch (pipelines/engine/loop.py)."""
    per_epoch = steps // epochs
    return epochs + sum(1 for step in range(CLOCK_STEPS, steps + 1, CLOCK_STEPS) if step % per_epoch)


def measure(pairs: int, params_file: Path) -> dict:
    """Each pair's seconds by mode, after one untimed run of each; the run's epochs, and whether every run
    wrote the same weights."""
    # One intra-op thread (as benchmarks/step_overhead.py): with one per core, whatever else runs on the machine
    # stalls a thread that every operation then waits for, and swamps a difference of a few percent.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return measured(pairs, params_file)
    finally:
        torch.set_num_threads(threads)


def measured(pairs: int, params_file: Path) -> dict:
    shipped = load_params(params_file, VIEWS_OFF)
    resume = {"auto": {"mode": "auto"}, "never": {"mode": "never"}, "every": {"mode": "auto", "every_minutes": 0}}
    runs = {mode: shipped.model_copy(update={"resume": shipped.resume.model_copy(update=resume[mode])})
            for mode in MODES}
    timings: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        paths = Paths(Path(folder))
        prepare(shipped, paths)
        augment(shipped, paths)
        first = {mode: timed(runs[mode], paths)[1] for mode in MODES}  # untimed: imports, first calls
        same = all(torch.equal(first[mode][key], first["never"][key]) for mode in MODES for key in first["never"])
        metrics = load_checkpoint(paths.model("student_baseline")).metrics
        for pair in range(pairs):
            order = MODES if pair % 2 == 0 else MODES[::-1]
            seconds = {}
            for mode in order:
                seconds[mode], weights = timed(runs[mode], paths)
                same = same and all(torch.equal(weights[key], first["auto"][key]) for key in weights)
            timings.append(seconds)
    return {"pairs": timings, "epochs": shipped.student.train.epochs, "resume": shipped.resume, "same": same,
            "saves": saves_at_every_reading(int(metrics["epochs"]), int(metrics["steps"]))}


def section(pairs: int = PAIRS, params_file: Path = ROOT / "params.yaml") -> str:
    """The benchmark as a markdown section: what ran, each pair, the median ratio against the target."""
    result = measure(pairs, params_file)
    ratios = [timing["auto"] / timing["never"] for timing in result["pairs"]]
    rows = "\n".join(f"| {index} | {timing['auto']:.2f} | {timing['never']:.2f} | {ratio:.3f} | {timing['every']:.2f} |"
                     for index, (timing, ratio) in enumerate(zip(result["pairs"], ratios), 1))
    median = statistics.median(ratios)
    every = result["resume"].every_minutes
    per_save = statistics.median(timing["every"] - timing["never"] for timing in result["pairs"]) / result["saves"]
    return (
        "## Resumable saves: their cost in training time\n\n"
        f"`{COMMAND}`: the baseline student's stage (`pipelines.train_student`, the shipped params: "
        f"{result['epochs']} epochs on the built-in digits) with `resume.mode: auto` (a save once {every:g} minutes "
        "have passed since the last, at the next epoch end or 10th step, written in the background) against "
        "`resume.mode: never`, in one process on the CPU (one intra-op thread), alternated, "
        f"{pairs} pair{'s' if pairs > 1 else ''} after one untimed run of each. Weights "
        f"{'bit-identical' if result['same'] else 'DIFFERENT'} in all three.\n\n"
        "| pair | shipped s | without saves s | shipped / without | a save at every reading s |\n"
        "|---|---|---|---|---|\n"
        f"{rows}\n\n"
        f"Median shipped / without: {median:.3f} (target: at most {TARGET}, "
        f"{'met' if median <= TARGET else 'NOT met'}). With a save at every reading of the clock ({result['saves']} "
        f"saves a run), one save costs {per_save * 1000:.1f} ms of the run's time (the median over the pairs): at "
        f"one save every {every:g} minutes, {per_save / (every * 60):.3%} of the training time, however long the run."
        "\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=PAIRS, help="timed rounds of the three")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args(argv)
    print(section(args.pairs, args.params))


if __name__ == "__main__":
    main()
