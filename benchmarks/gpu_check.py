"""GPU check: the engine's training (`pipelines.engine.loop.fit` under the objective a stage builds) against a
hand-tuned plain PyTorch loop (benchmarks/tuned_loop.py), side by side in one process, on one CUDA GPU.

    python -m benchmarks.gpu_check [--repeats 3] [--images 10000] [--compile-mode default]
    python -m benchmarks.gpu_check --smoke     # a few steps of tiny models on the CPU: the script's plumbing

Three workloads on synthetic CIFAR-shaped data made in the process (uint8 3x32x32 images, random pixels and
labels: nothing is downloaded, and the speed of a step does not depend on what the images show):

    teacher        a ResNet-18-sized teacher (params' resnet arch: width 64, 4 stages of 2 basic blocks, 11.2M
                   parameters) trained on 10 classes, as train_teacher trains it (params' teacher section)
    student_kd     params' student under Hinton's loss (0.9 kd at T = 8 + 0.1 ce, the loss the tuned loop knows)
                   on 100 classes, from the teacher's stored logits (what teacher_logits writes), as the distill
                   stage trains it
    student_live   the same student with `teacher: live`: the teacher run on each batch beside it

Each under four settings, one speed switch added at a time: fp32 (float32, eager); +bf16 (autocast);
+channels_last; +compile (torch.compile). In every setting both sides keep the data on the GPU, use cuDNN's
autotuner, TF32 and a fused optimizer, as far as the engine's `speed` section offers each (the run names any
it does not). Per setting and side: one run of one epoch first (compiling, autotuning: left out of the
figures), then `--repeats` timed runs, the two sides alternated, each between two torch.cuda.synchronize();
a run is a whole training (set-up, epochs, validation every epoch). It prints the training images per second
(median of the repeats), each ratio to the plain loop, the peak GPU memory each run allocated beyond what was
allocated before it (torch.cuda.max_memory_allocated), and the graphs torch.compile made after the first run:
none, if nothing recompiles; then the issue's GPU targets, met or not. The defaults are sized to take at most
8 minutes on one GPU (the sizes are options; the section says how long the check took). Without a CUDA device
it exits 2, unless `--smoke`.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch._dynamo

from benchmarks.gpu_workloads import SMOKE, WORKLOADS, Sizes, Workload, with_train, workloads
from benchmarks.tuned_loop import Switches, TunedLoop, tuned_backends
from pipelines.config.speed import SpeedParams
from pipelines.engine.loop import fit
from pipelines.engine.runtime import init_runtime
from pipelines.models import count_parameters

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m benchmarks.gpu_check"
SETTINGS = {  # one switch more at a time
    "fp32": {"bf16": False, "channels_last": False, "compile": False},
    "+bf16": {"bf16": True, "channels_last": False, "compile": False},
    "+channels_last": {"bf16": True, "channels_last": True, "compile": False},
    "+compile": {"bf16": True, "channels_last": True, "compile": True},
}
ALWAYS = {"pin_memory": True, "data_on_device": True, "tf32": True, "cudnn_benchmark": True,
          "optimizer_implementation": "auto"}  # the engine's other speed settings, on in every setting
TARGETS = {"teacher": 0.9, "student_kd": 0.8}  # the issue's: engine / plain images per second, with +compile


def engine_speed(setting: dict[str, bool], compile_mode: str) -> tuple[SpeedParams, list[str]]:
    """The engine's speed section for `setting`, and the settings this checkout's section does not have."""
    wanted = {**ALWAYS, **setting, "compile_mode": compile_mode}
    missing = sorted(set(wanted) - set(SpeedParams.model_fields))
    return SpeedParams(**{key: value for key, value in wanted.items() if key not in missing}), missing


Run = Callable[[int], int]  # a run of some epochs: the training images it saw


def engine_side(workload: Workload, speed: SpeedParams, device: torch.device) -> Run:
    """`fit` of one model and objective, run after run, as a stage calls it (its training log in a folder)."""
    runtime = init_runtime(device.type, speed=speed)
    model, objective = workload.model(), workload.objective()

    def run(epochs: int) -> int:
        training = with_train(workload.training, epochs, None)
        with tempfile.TemporaryDirectory() as folder:
            trained = fit(model, workload.train_set, workload.val_set, objective, training, runtime, workload.seed,
                          Path(folder) / "log")
        batch, rows = training.train.batch_size, len(workload.train_set)
        assert isinstance(batch, int)
        return epochs * min(rows, int(trained.metrics["steps"]) // epochs * batch)  # (a partial batch or none)
    return run


def plain_side(workload: Workload, switches: Switches, device: torch.device) -> Run:
    """The tuned loop of one model, run after run, under its own backend settings."""
    teacher = None if workload.live_teacher is None else workload.live_teacher()
    loop = TunedLoop(workload.model(), workload.train_set, workload.val_set, workload.criterion, workload.training,
                     switches, device, workload.stored, teacher)

    def run(epochs: int) -> int:
        with tuned_backends():
            return loop.run(epochs)[0]
    return run


@dataclass
class Timings:
    """One side's runs under one setting."""

    seconds: list[float]
    images: int
    peak_mib: float | None  # the largest of the runs'
    warm_up_graphs: int
    new_graphs: int  # graphs compiled during the timed runs

    @property
    def rate(self) -> float:
        return self.images / statistics.median(self.seconds)


def graphs() -> int:
    """The graphs torch.compile has made in this process so far."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def timed(run: Run, epochs: int, device: torch.device) -> tuple[float, int, float | None]:
    """Seconds, images and peak memory (MiB beyond what was allocated before) of one run."""
    cuda = device.type == "cuda"
    if cuda:
        gc.collect()  # the last run's tensors caught in reference cycles: not counted against this one
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    images = run(epochs)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return seconds, images, (torch.cuda.max_memory_allocated(device) - before) / 2**20 if cuda else None


def measure(sides: dict[str, Run], epochs: int, repeats: int, device: torch.device) -> dict[str, Timings]:
    """One untimed run of one epoch per side, then `repeats` timed runs of `epochs`, the sides alternated."""
    results = {}
    for side, run in sides.items():
        before = graphs()
        timed(run, 1, device)
        results[side] = Timings([], 0, None, graphs() - before, 0)
    for _ in range(repeats):
        for side, run in sides.items():
            before = graphs()
            seconds, images, peak = timed(run, epochs, device)
            result = results[side]
            result.seconds.append(seconds)
            result.images, result.new_graphs = images, result.new_graphs + graphs() - before
            result.peak_mib = peak if result.peak_mib is None or peak is None else max(peak, result.peak_mib)
    return results


def run_workload(workload: Workload, sizes: Sizes, device: torch.device, compile_mode: str,
                 notes: set[str]) -> Iterator[tuple[str, dict[str, Timings]]]:
    """Each setting's timings of both sides; adds to `notes` the settings the engine's speed section lacks."""
    for setting, switches in SETTINGS.items():
        speed, missing = engine_speed(switches, compile_mode)
        notes.update(missing)
        if switches["compile"]:
            torch._dynamo.reset()  # each workload's graphs on their own, under dynamo's limit of graphs per code
        backend = "inductor" if device.type == "cuda" else "eager"
        plain = Switches(**switches, compile_mode=compile_mode, backend=backend)
        sides = {"engine": engine_side(workload, speed, device), "plain": plain_side(workload, plain, device)}
        yield setting, measure(sides, workload.epochs, sizes.repeats, device)


def table(results: list[tuple[str, dict[str, Timings]]]) -> str:
    """A workload's settings, one row each."""
    lines = ["| setting | engine images/s | plain loop images/s | engine / plain | engine peak MiB | plain peak MiB "
             "| graphs compiled: first run, later runs (engine; plain) |", "|---|---|---|---|---|---|---|"]
    for setting, result in results:
        engine, plain = result["engine"], result["plain"]
        peaks = [f"{side.peak_mib:.0f}" if side.peak_mib is not None else "-" for side in (engine, plain)]
        compiled = (f"{engine.warm_up_graphs}, {engine.new_graphs}; {plain.warm_up_graphs}, {plain.new_graphs}"
                    if SETTINGS[setting]["compile"] else "-")
        lines.append(f"| {setting} | {engine.rate:,.0f} | {plain.rate:,.0f} | {engine.rate / plain.rate:.2f} "
                     f"| {peaks[0]} | {peaks[1]} | {compiled} |")
    return "\n".join(lines)


def targets(workload: str, compiled: dict[str, Timings]) -> str:
    """The issue's GPU targets with every switch on (+compile), each met or not."""
    engine, plain = compiled["engine"], compiled["plain"]
    checks = [(f"no graph compiled after the first run (engine: {engine.new_graphs})", engine.new_graphs == 0)]
    if workload in TARGETS:
        ratio = engine.rate / plain.rate
        checks.insert(0, (f"engine / plain images per second at least {TARGETS[workload]} ({ratio:.2f})",
                          ratio >= TARGETS[workload]))
    if engine.peak_mib is not None and plain.peak_mib:
        share = engine.peak_mib / plain.peak_mib
        checks.append((f"peak memory within 10% of the plain loop's ({share:.2f}x)", share <= 1.1))
    return "Targets with +compile: " + "; ".join(f"{what}: {'met' if met else 'NOT met'}" for what, met in checks) + "."


def section(sizes: Sizes = Sizes(), compile_mode: str = "default", params_file: Path = ROOT / "params.yaml",
            smoke: bool = False, only: tuple[str, ...] = WORKLOADS) -> str:
    """The check as a markdown section (a run on this machine's GPU, or on its CPU with `smoke`), of the
    workloads named in `only`."""
    if not smoke and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device is visible: this check needs one")
    started, device = time.perf_counter(), torch.device("cpu" if smoke else "cuda")
    name = "CPU (smoke run: the plumbing, not the speed)" if smoke else torch.cuda.get_device_name(device)
    threads, limit = torch.get_num_threads(), torch._dynamo.config.recompile_limit
    if smoke:
        torch.set_num_threads(1)  # tiny tensors: threads would only wait on each other (and on other processes)
    torch._dynamo.config.recompile_limit = 64  # graphs of one code (the engine's and the loop's) never go eager
    parts, notes = [], set[str]()
    try:
        with tempfile.TemporaryDirectory() as folder:
            parts = [workload_section(workload, sizes, device, compile_mode, notes)
                     for workload in workloads(params_file, sizes, device, Path(folder)) if workload.name in only]
    finally:
        torch.set_num_threads(threads)
        torch._dynamo.config.recompile_limit = limit
    missing = (f" This checkout's `speed` section has no {', '.join(sorted(notes))}: the engine ran at torch's "
               f"default for each." if notes else "")
    return (f"## GPU: the engine against a hand-tuned loop\n\n`{COMMAND}{' --smoke' if smoke else ''}` on {name}, "
            f"torch {torch.__version__}, compile mode {compile_mode}: images per second are medians of "
            f"{sizes.repeats} timed runs per side after one untimed run; peak memory is what a run allocated "
            f"beyond what was allocated before it; no graph compiled after the first run means no recompiles."
            f"{missing} The whole check took {(time.perf_counter() - started) / 60:.1f} min.\n\n"
            + "\n".join(parts))


def workload_section(workload: Workload, sizes: Sizes, device: torch.device, compile_mode: str,
                     notes: set[str]) -> str:
    """One workload's part of the section: what it trains, its table, the targets."""
    results = list(run_workload(workload, sizes, device, compile_mode, notes))
    return (f"### {workload.name}\n\n{len(workload.train_set):,} images of {len(workload.train_set.class_names)} "
            f"classes, {workload.training.model.arch} ({count_parameters(workload.model()):,} parameters), batch "
            f"{workload.training.train.batch_size}, {workload.training.optimizer.name}, {workload.epochs} epochs a "
            f"run.\n\n{table(results)}\n\n{targets(workload.name, results[-1][1])}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few steps of tiny models on the CPU")
    parser.add_argument("--repeats", type=int, default=Sizes.repeats)
    parser.add_argument("--images", type=int, default=Sizes.images, help="training images of each workload")
    parser.add_argument("--compile-mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {', '.join(WORKLOADS)}")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args(argv)
    only = tuple(args.workloads.split(","))
    if unknown := sorted(set(only) - set(WORKLOADS)):
        parser.error(f"--workloads: no workload {', '.join(unknown)}; valid: {', '.join(WORKLOADS)}")
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device is visible: this check needs one (`--smoke` runs its plumbing on the CPU)",
              file=sys.stderr)
        sys.exit(2)
    sizes = SMOKE if args.smoke else replace(Sizes(), repeats=args.repeats, images=args.images)
    print(section(sizes, args.compile_mode, args.params, smoke=args.smoke, only=only))


if __name__ == "__main__":
    main()
