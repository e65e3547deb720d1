"""What the distillation flow adds to a flow run when there is nothing to do: `python -m flows.distillation` on a
project whose every stage is up to date, against a trivial flow of two empty tasks, both whole processes (as
`make run` starts one), alternated, on one temporary Prefect server. The server's start-up, which both would
pay alike, is left out; Python's start-up and imports are in.

    python -m benchmarks.flow_overhead [--runs 3]

The project is a throwaway copy of this checkout (code, dvc.yaml, the committed params.yaml made tiny, as the
tests' `project` fixture makes it), reproduced once by `dvc repro` before any timing; a run of each kind warms
the caches first, untimed. Every timed rerun must leave dvc.lock as it was, or the benchmark stops.
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

from prefect import flow, task

# The target: a rerun with nothing to do costs at most this much more than the trivial flow.
TARGET_S = 2.0
COMMAND = "python -m benchmarks.flow_overhead"


@task
def nothing() -> None:
    """An empty task: what a task run costs Prefect alone."""


@flow(name="trivial")
def trivial() -> None:
    """The yardstick: a flow of two empty tasks."""
    nothing()
    nothing()


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Seconds the whole process took; its output in the error when it fails."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{command} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds


def measure(runs: int) -> list[tuple[float, float]]:
    """(distillation flow s, trivial flow s) for each of `runs` alternated pairs, after one untimed pair."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from tasks.environment import DEFAULTS, quiet_offline
    from tests.conftest import PROJECT_ROOT, make_project, run

    with (tempfile.TemporaryDirectory() as folder, quiet_offline(),
          prefect_test_harness(server_startup_timeout=300)):
        project = make_project(Path(folder) / "project")
        run(["dvc", "repro"], project)
        lock = (project / "dvc.lock").read_bytes()
        env = {**DEFAULTS, **os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
               "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        distillation = [sys.executable, "-m", "flows.distillation"]
        yardstick = [sys.executable, "-m", "benchmarks.flow_overhead", "--trivial"]
        pairs = []
        for index in range(runs + 1):
            pair = timed(distillation, project, env), timed(yardstick, PROJECT_ROOT, env)
            if (project / "dvc.lock").read_bytes() != lock:
                raise RuntimeError("a rerun of the flow changed dvc.lock: the project was not up to date")
            if index:  # the first pair warms the caches
                pairs.append(pair)
                print(f"run {index}: distillation flow {pair[0]:.2f} s, trivial flow {pair[1]:.2f} s",
                      file=sys.stderr, flush=True)
    return pairs


def section(runs: int = 3) -> str:
    """The benchmark as a markdown section: heading, how to reproduce it, each run, the medians and their
    difference against the target."""
    pairs = measure(runs)
    flow_s, trivial_s = (statistics.median(column) for column in zip(*pairs))
    difference = flow_s - trivial_s
    rows = "\n".join(f"| {index} | {ours:.2f} | {theirs:.2f} |" for index, (ours, theirs) in enumerate(pairs, 1))
    return (
        "## Flow overhead: a rerun with nothing to do\n\n"
        f"`{COMMAND}`: the distillation flow on an up-to-date project against a trivial flow of two empty "
        f"tasks, whole processes on one temporary Prefect server (its start-up left out), alternated, "
        f"{runs} runs each after one untimed run of each; {os.cpu_count()} CPU cores.\n\n"
        "| run | distillation flow, s | trivial flow, s |\n|---|---|---|\n"
        f"{rows}\n| median | {flow_s:.2f} | {trivial_s:.2f} |\n\n"
        f"The distillation flow's own cost: {difference:+.2f} s over the trivial flow "
        f"(target: at most {TARGET_S:.0f} s, {'met' if difference <= TARGET_S else 'NOT met'}).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each flow")
    parser.add_argument("--trivial", action="store_true", help="run the trivial flow alone (the benchmark's yardstick)")
    args = parser.parse_args()
    if args.trivial:
        trivial()
    else:
        print(section(args.runs))


if __name__ == "__main__":
    main()
