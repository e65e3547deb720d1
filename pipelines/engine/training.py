"""A training stage from start to end: open the prepared data, build the model, fit it under an objective,
save the checkpoint (the teacher, the baseline student and each distilled student run this)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import torch
import torch.distributed as dist

from pipelines.config import Params, ParamsError
from pipelines.config.training import ModelParams, TrainingParams
from pipelines.core.atomic import atomic_path
from pipelines.core.paths import Paths
from pipelines.data.card import DatasetCard, read_card
from pipelines.data.images import open_image_set
from pipelines.engine.checkpoint import save_checkpoint
from pipelines.engine.divergence import TrainingDiverged
from pipelines.engine.loop import fit
from pipelines.engine.objective import Objective
from pipelines.engine.parallel import full_state_dict
from pipelines.engine.resume import Resume, fingerprint, input_identity
from pipelines.engine.runtime import Runtime, init_runtime, shutdown
from pipelines.engine.schedules import steps_per_epoch
from pipelines.models import ModelConfig, build_model, count_parameters

log = logging.getLogger(__name__)


def model_config(params: ModelParams, card: DatasetCard) -> ModelConfig:
    """The model of `params` sized for the prepared data: its channels, image size, classes and statistics."""
    channels, height, width = card.image_shape
    return ModelConfig(
        arch=params.arch, width=params.width, depth=params.depth, blocks_per_stage=params.blocks_per_stage,
        dropout=params.dropout, in_channels=channels, image_size=(height, width), num_classes=card.num_classes,
        pixel_mean=tuple(card.pixel_mean), pixel_std=tuple(card.pixel_std),
    )


def train_and_save(
    name: str, training: TrainingParams, objective: Objective, params: Params, paths: Paths, heads: Path | None = None
) -> dict[str, float]:
    """Build model `name` for the prepared data, fit it on the transfer set under `objective`, save it to
    models/<name>.pt with its training log in metrics/train/<name>/; return its final metrics. With
    `heads`, also save there what the objective learned itself (connectors; an empty state dict if nothing),
    apart from the model's checkpoint, which stays loadable on its own."""
    distributed = params.distributed_for(training)
    runtime = init_runtime(params.device, distributed.timeout_s, params.speed)
    card = read_card(paths.card)
    transfer = open_image_set(paths.transfer, paths.arrow_cache)
    val = open_image_set(paths.split("val"), paths.arrow_cache)
    torch.manual_seed(params.seed)
    config = model_config(training.model, card)
    model = build_model(config)
    log.info(
        "%s: %d parameters, %d training images, device %s x %d",
        name, count_parameters(model), len(transfer), runtime.device, runtime.world_size,
    )
    batch_size = len(transfer) if training.train.batch_size == "full" else training.train.batch_size
    if distributed.strategy != "pipeline" and batch_size < runtime.world_size:
        raise ParamsError(f"{name}'s train.batch_size: {batch_size} rows a step cannot be shared out over "
                          f"{runtime.world_size} processes (each takes its own rows); use a batch of at least "
                          f"{runtime.world_size}, or fewer processes")
    if runtime.nodes > 1:  # (one node's processes all read the launcher's params and files)
        same_run_everywhere(runtime, run_fingerprint(name, training, params, paths, runtime, len(transfer),
                                                     times=False))
    resume = None
    if params.resume.mode == "auto":
        folder = paths.resume_states(params.resume.folder, name)
        resume = Resume(folder, params.resume, runtime,
                        run_fingerprint(name, training, params, paths, runtime, len(transfer)))
    try:
        kept, metrics = fit(model, transfer, val, objective, training, runtime, params.seed,
                            paths.training_log(name), distributed, resume)
    except BaseException as error:
        if resume is not None:
            resume.release()  # a failed run's folder goes unless it holds saves to resume from
        if isinstance(error, TrainingDiverged):
            key = section_of(name, params)
            fate = "is kept as it was" if paths.model(name).exists() else "is not written"
            raise error.about(name, f"{paths.model(name)} {fate}. Lower {key}.optimizer.lr, warm up "
                                    f"({key}.schedule.warmup) or clip the gradients "
                                    f"({key}.regularization.grad_clip)") from None
        raise
    state = full_state_dict(kept)  # under FSDP a collective: every rank takes part, the main one writes
    learned = full_state_dict(objective) if heads is not None else {}
    if runtime.is_main:
        save_checkpoint(paths.model(name), state, config, metrics)
        if heads is not None:
            with atomic_path(heads) as tmp:
                torch.save(learned, tmp)
        if resume is not None:
            resume.remove()  # the model is saved: its training states have served
    shutdown(runtime)
    return metrics


def section_of(name: str, params: Params) -> str:
    """The params section that holds model `name`'s optimizer: its own, or the student section it takes."""
    if name == "teacher":
        return "teacher"
    return f"distill.{name}" if name in params.distill and "optimizer" in params.distill[name].overrides else "student"


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
