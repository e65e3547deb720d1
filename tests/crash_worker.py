"""A command for the traceback test, run from the project root: `python -m tests.crash_worker`.

The launcher (`launch_workers`, as a stage's command is) for 2 CPU processes; each worker joins the process
group as the stages' workers do (`init_runtime`), then rank 1 raises an error that nothing catches.
"""

import sys

from pipelines.config.distributed import DistributedParams
from pipelines.core.launch import launch_workers, under_torchrun
from pipelines.engine.runtime import init_runtime, shutdown

if __name__ == "__main__":
    if not under_torchrun():
        launch_workers(DistributedParams(nproc_per_node=2, strategy="ddp", timeout_s=30), "cpu")
        sys.exit(0)
    runtime = init_runtime("cpu", timeout_s=30)
    if runtime.rank == 1:
        raise ValueError("an error nothing catches")
    shutdown(runtime)
