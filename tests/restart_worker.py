"""A command for the restart test, run from the project root: `python -m tests.restart_worker RESTARTS`.

Started by hand it is the launcher (`launch_workers`, as a stage's command is): it becomes torchrun's agent
for 2 CPU processes and RESTARTS restarts. Each worker joins the process group as the stages' workers do
(`init_runtime`), then its first collective gathers every rank's attempt number. In every attempt but the
last (torchrun's TORCHELASTIC_RESTART_COUNT), rank 1 then kills itself, so torchrun stops the other and starts
both again; the last attempt prints what it gathered and ends. Under a torchrun typed by hand
(`torchrun --standalone --nproc-per-node 2 --max-restarts RESTARTS -m tests.restart_worker RESTARTS`) it is
that torchrun's worker.
"""

import os
import signal
import sys
import time

import torch.distributed as dist

from pipelines.config.distributed import DistributedParams
from pipelines.core.launch import launch_workers, under_torchrun
from pipelines.engine.runtime import init_runtime, shutdown

if __name__ == "__main__":
    last = int(sys.argv[1])
    if not under_torchrun():
        launch_workers(DistributedParams(nproc_per_node=2, strategy="ddp", max_restarts=last, timeout_s=30), "cpu")
        sys.exit(0)
    attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    runtime = init_runtime("cpu", timeout_s=30)
    attempts = [None] * runtime.world_size
    dist.all_gather_object(attempts, attempt)
    if attempt < last:
        if runtime.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # until torchrun stops this attempt
    print(f"rank {runtime.rank} gathered attempts {attempts}", flush=True)
    shutdown(runtime)
