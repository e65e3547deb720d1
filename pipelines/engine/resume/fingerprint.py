"""What a saved training state must share with a run to be resumed by it: `run_fingerprint`, a short hash of
the model's training params, the seed, how the processes split each batch, the device and the inputs. Nodes
started from other params or data are caught with it too (`same_run_everywhere`)."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import torch.distributed as dist

from pipelines.config import Params, ParamsError
from pipelines.config.training import TrainingParams
from pipelines.core.paths import Paths
from pipelines.engine.runtime import Runtime
from pipelines.engine.schedules import steps_per_epoch


def fingerprint(**what: Any) -> str:
    """A short hash of what makes a saved state resumable: the same params, processes and input files."""
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_identity(*files: Path, times: bool = True) -> list[tuple[str, int, int]]:
    """Size and modification time of each existing input: a rewritten input (new data) changes them. Without
    `times`, sizes alone (the same files on two nodes have their own times)."""
    return [(path.name, stat.st_size, stat.st_mtime_ns if times else 0)
            for path in files if path.exists() for stat in [path.stat()]]


def same_run_everywhere(runtime: Runtime, run: str) -> None:
    """ParamsError on every process unless all were started with the same params and inputs (`run`: their
    fingerprint without file times, which differ between nodes). Nodes started from another params.yaml or
    other data would otherwise train one model from two runs, or wait at its end for the longer one."""
    seen: list[tuple[str, str]] = [("", "")] * runtime.world_size  # every item replaced by the gather
    dist.all_gather_object(seen, (run, socket.gethostname()))
    odd = [f"rank {rank} on {host}" for rank, (other, host) in enumerate(seen) if other != seen[0][0]]
    if odd:
        raise ParamsError(f"the processes were started with different params or inputs: {', '.join(odd)} against "
                          f"rank 0 on {seen[0][1]}; start every node from the same params.yaml and data (the same "
                          f"commit, then dvc pull)")


def run_fingerprint(
    name: str, training: TrainingParams, params: Params, paths: Paths, runtime: Runtime, examples: int,
    times: bool = True,
) -> str:
    """What a saved training state must share with this run to be resumed: the model's training params (and a
    distilled student's loss), the seed, how the processes split each batch, the device and bf16, the inputs
    (their sizes and, with `times`, modification times).

    The number of processes and the strategy may change (a node lost, more GPUs, a pipeline's model that now
    fits on one device): each process saves what it holds under the whole model's names and DCP reshards it,
    so a save resumes wherever each step's global batch is still split into the same micro-batches (a
    pipeline's `microbatches`, otherwise `grad_accum_steps`) over the same steps per epoch (a pipeline, of one
    stage too, leaves an epoch's last, incomplete batch out). With `lr_scaling` the learning rate depends on
    the number of processes (outside a pipeline, whose stages do not share out the batch), which must then
    stay the same."""
    distributed = params.distributed_for(training)
    batch_size = examples if training.train.batch_size == "full" else training.train.batch_size
    split = distributed.model_dump(include={"sync_batchnorm", "lr_scaling"})
    if distributed.strategy == "pipeline":
        split |= {"micro_batches": distributed.microbatches, "epoch_steps": examples // batch_size}
    else:
        split |= {"micro_batches": distributed.grad_accum_steps,
                  "epoch_steps": steps_per_epoch(examples, batch_size, runtime.world_size)}
    if distributed.lr_scaling != "none" and distributed.strategy != "pipeline":
        split["world_size"] = runtime.world_size
    return fingerprint(
        # the model's own `distributed` changes are in `split` as far as they matter, as the section's are
        training=training.model_dump(exclude={"distributed"}),
        loss=params.distill[name].model_dump(exclude={"distributed"}) if name in params.distill else None,
        seed=params.seed, device=runtime.device.type, bf16=runtime.speed.bf16, split=split,
        inputs=input_identity(paths.transfer, paths.split("val"), paths.card, paths.teacher_logits,
                              paths.model("teacher"), paths.teacher_features(name) / "manifest.json", times=times),
    )
