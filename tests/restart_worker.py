"""A worker for the restart test: each process joins the process group as the stages' workers do
(`init_runtime`), then its first collective gathers every rank's attempt number. In every attempt but the
last (torchrun's TORCHELASTIC_RESTART_COUNT against `--max-restarts`), rank 1 then kills itself, so torchrun
stops the others and starts them all again; the last attempt prints what it gathered and ends.

    python -m torch.distributed.run --standalone --nproc-per-node 2 --max-restarts 3 tests/restart_worker.py 3
"""

import os
import signal
import sys
import time
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.engine.runtime import init_runtime, shutdown  # noqa: E402

if __name__ == "__main__":
    attempt, last = int(os.environ["TORCHELASTIC_RESTART_COUNT"]), int(sys.argv[1])
    runtime = init_runtime("cpu", timeout_s=30)
    attempts = [None] * runtime.world_size
    dist.all_gather_object(attempts, attempt)
    if attempt < last:
        if runtime.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # until torchrun stops this attempt
    print(f"rank {runtime.rank} gathered attempts {attempts}", flush=True)
    shutdown(runtime)
