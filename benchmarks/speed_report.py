"""docs/benchmarks.md, written from the speed benchmarks' own output: `make bench-speed` runs this. Every figure
on the page is printed by a committed benchmark's `section()`; none is typed by hand.

    python -m benchmarks.speed_report                         # every benchmark this machine can run
    python -m benchmarks.speed_report --only step_overhead    # rerun some; the page keeps the others' sections

The page starts with the machine of this run; each section sits between markers, with the date and machine it
was recorded on, so a section this run does not produce is kept as the page had it: the GPU check's on a
machine without CUDA (with a line saying how to record it where there is none yet), a benchmark left out with
`--only`, or one this checkout does not have.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import os
import platform
import re
import sys
from pathlib import Path

import torch

from pipelines.core.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "benchmarks.md"
# The sections in page order: each the `section()` of benchmarks/<name>.py.
SECTIONS = ("step_overhead", "stage_overhead", "save_cost", "flow_overhead", "gpu_check")
BLOCK = re.compile(r"<!-- section: (\w+) -->\n(.*?)<!-- end of section: \1 -->\n", re.DOTALL)
NOT_YET = {
    "gpu_check": "## GPU: the engine against a hand-tuned loop\n\nNo GPU figures have been recorded yet: on a "
                 "machine with a CUDA GPU, `make bench-speed` records them (or `python -m benchmarks.gpu_check` "
                 "prints them alone).\n",
}


def machine() -> str:
    """This machine, as the page's header and each section's record name it: CPU model, cores, torch, Python."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        model = names[0].strip() if names else model
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{model}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, Python "
            f"{platform.python_version()}, {platform.system()}")


def runnable(name: str) -> bool:
    """Whether this run can produce section `name`: the module exists with a `section()`, and CUDA is there
    for the GPU check."""
    if name == "gpu_check" and not torch.cuda.is_available():
        return False
    return importlib.util.find_spec(f"benchmarks.{name}") is not None and hasattr(
        importlib.import_module(f"benchmarks.{name}"), "section")


def compose(previous: str, fresh: dict[str, str], header: str, recorded: str) -> str:
    """The page: `header`, then each section of SECTIONS: the `fresh` one (marked recorded on `recorded`), else
    the one `previous` (the page as it was) holds, else a line saying it has not been recorded."""
    kept = dict(BLOCK.findall(previous))
    blocks = []
    for name in SECTIONS:
        if name in fresh:
            body = f"{fresh[name].rstrip()}\n\n_Recorded {recorded}._\n"
        elif name in kept:
            body = kept[name]
        else:
            body = NOT_YET.get(name, f"## {name}\n\nNot recorded yet: `python -m benchmarks.speed_report --only "
                                     f"{name}`.\n")
        blocks.append(f"<!-- section: {name} -->\n{body}<!-- end of section: {name} -->\n")
    return header + "\n" + "\n".join(blocks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated sections to rerun, of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--output", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(SECTIONS)
    if unknown := sorted(set(chosen) - set(SECTIONS)):
        parser.error(f"--only: no section {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    fresh = {}
    for name in chosen:
        if not runnable(name):
            print(f"{name}: not run here (no CUDA device, or no benchmarks/{name}.py with a section()); "
                  f"its section stays as the page has it", file=sys.stderr)
            continue
        print(f"{name}: running", file=sys.stderr, flush=True)
        fresh[name] = importlib.import_module(f"benchmarks.{name}").section()
    recorded = f"{now} on {machine()}"
    header = ("# Benchmarks\n\nWritten by `make bench-speed` (benchmarks/speed_report.py) from the benchmarks' own "
              "output: edit the scripts, not this page. Each section says how to rerun it, and when and on what it "
              f"was recorded.\n\nLast run: {recorded}.\n")
    previous = args.output.read_text() if args.output.exists() else ""
    write_text(args.output, compose(previous, fresh, header, recorded))
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
