"""One launcher for the training stages, whoever starts them (`dvc repro`, the Prefect flow, a shell):
with one process the stage runs in this process; with more (params' `distributed` section) this process
becomes torchrun's agent and starts the stage's workers, the same command under torchrun.

torchrun (torch.distributed.run) does the process management: the rendezvous, the workers' environment,
their output (each line prefixed with its global rank, `[rank0]:`), restarts, and the failure report that
names the failed rank with its own traceback.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from pipelines.config.distributed import DistributedParams
from pipelines.core.errors import first_line

RDZV_BACKEND = "c10d-fresh-rounds"  # torchrun's c10d rendezvous, each round's workers apart (core/rendezvous.py)
LINE_PREFIX_VARIABLE = "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"  # torchrun's prefix of each worker's lines
# gloo's words for a collective that waited past its timeout: its own wait's, or the transport's once the pair's
# timeout closes the connection first. NCCL's watchdog aborts the process instead.
GLOO_TIMEOUT_WORDS = ("timed out", "timeout caused pair closure")


def under_torchrun() -> bool:
    """Whether this process is a worker that torchrun started (or a `torchrun ...` typed by hand)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def end_with_agent(poll_s: float = 1.0) -> None:
    """End this worker when its torchrun agent ends. torchrun starts each worker in a session of its own and
    stops them when it stops, but an agent killed outright (SIGKILL, the OOM killer) cannot: its workers would
    train on and write alone. A daemon thread sees the worker handed to another parent and ends it."""
    agent = os.getppid()

    def watch() -> None:
        while os.getppid() == agent:
            time.sleep(poll_s)
        print(f"torchrun's agent (pid {agent}) is gone: this worker stops", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-agent", daemon=True).start()


def processes_per_node(params: DistributedParams) -> int:
    if params.nproc_per_node != "auto":
        return params.nproc_per_node
    import torch

    return max(torch.cuda.device_count(), 1)


def torchrun_arguments(params: DistributedParams, module: str, arguments: list[str]) -> list[str]:
    """torchrun's command line that runs `python -m module arguments` in each worker."""
    launch = ["--nproc-per-node", str(processes_per_node(params)), "--max-restarts", str(params.max_restarts),
              "--tee", "3", "--rdzv-backend", RDZV_BACKEND]
    if params.nnodes == 1:  # torchrun's --standalone: a store on a free local port, so runs never collide
        launch += ["--rdzv-endpoint", "localhost:0", "--rdzv-id", "standalone"]
    else:
        launch += ["--nnodes", str(params.nnodes), "--rdzv-endpoint", params.rdzv_endpoint, "--rdzv-id", params.rdzv_id,
                   "--rdzv-conf", f"join_timeout={params.timeout_s},read_timeout={params.timeout_s}"]
    return [*launch, "-m", module, *arguments]


def device_type(device: str) -> str:
    """The kind of device params' `device` (auto, cpu, cuda) gives this machine."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def launch_workers(params: DistributedParams, device: str) -> None:
    """Run this command's module under torchrun with the workers params ask for; exit 1 naming the failed
    rank (and its traceback) if one fails for good. What the workers would refuse of the params is refused
    first (ParamsError), before any of them starts."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import parse_args, run

    from pipelines.core import rendezvous

    params.check_processes(params.nnodes * processes_per_node(params), params.nnodes, device_type(device))
    spec = sys.modules["__main__"].__spec__
    assert spec is not None  # stages run as `python -m pipelines.<stage>`
    module = spec.name  # the stage, as `python -m pipelines.<stage>` named it
    rendezvous.register(RDZV_BACKEND)  # each round of workers meets in a key space of its own (restarts)
    os.environ.setdefault(LINE_PREFIX_VARIABLE, "[rank${rank}]:")  # (torchrun's: the local rank)
    try:
        run(parse_args(torchrun_arguments(params, module, sys.argv[1:])))
    except RendezvousError as error:
        print(f"{module}: the {params.nnodes} nodes did not meet at distributed.rdzv_endpoint {params.rdzv_endpoint} "
              f"(rdzv_id {params.rdzv_id}) within distributed.timeout_s ({params.timeout_s} s): "
              f"{type(error).__name__}: {first_line(error)}. Start the same "
              f"command on every node, with an rdzv_endpoint (host:port of one of them) that each one reaches",
              file=sys.stderr)
        sys.exit(1)
    except ChildFailedError as error:
        failed = ", ".join(f"rank {rank} (exit code {failure.exitcode})" for rank, failure in error.failures.items())
        rank, first = error.get_first_failure()
        if first.exitcode in (1, 2) and not os.path.isfile(first.error_file):  # no traceback: a user's error
            print(f"{module} failed on {failed}: rank {rank}'s message is above", file=sys.stderr)
            sys.exit(first.exitcode)  # as in one process: 2 for params, 1 for data
        print(f"{module} failed on {failed}\n{error}", file=sys.stderr)
        if any(words in str(first.message).lower() for words in GLOO_TIMEOUT_WORDS):
            print(f"rank {rank} waited longer than distributed.timeout_s ({params.timeout_s} s) for the other "
                  f"processes in a collective: one of them stopped answering (hung, stopped, or its node lost)",
                  file=sys.stderr)
        sys.exit(1)


def needs_workers(params: DistributedParams) -> bool:
    """Whether this command must start workers: more than one process asked for, and none started yet."""
    if params.strategy == "none":
        return False
    return not under_torchrun() and (params.nnodes > 1 or processes_per_node(params) > 1)
