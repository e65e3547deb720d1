"""A training stage from start to end: open the prepared data, build the model, fit it under an objective,
save the checkpoint (the teacher, the baseline student and each distilled student run this)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

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
from pipelines.engine.resume import resume_for
from pipelines.engine.resume.fingerprint import run_fingerprint, same_run_everywhere
from pipelines.engine.runtime import init_runtime, shutdown
from pipelines.models import ModelConfig, build_model, count_parameters

log = logging.getLogger(__name__)


def model_config(params: ModelParams, card: DatasetCard) -> ModelConfig:
    """The model of `params` sized for the prepared data: its channels, image size, classes and statistics
    (and an mlp's init and norm, so that its checkpoint rebuilds the same layers)."""
    channels, height, width = card.image_shape
    return ModelConfig(
        arch=params.arch, width=params.width, depth=params.depth, blocks_per_stage=params.blocks_per_stage,
        dropout=params.dropout, in_channels=channels, image_size=(height, width), num_classes=card.num_classes,
        pixel_mean=tuple(card.pixel_mean), pixel_std=tuple(card.pixel_std), init=params.init, norm=params.norm,
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
    resume = resume_for(name, training, params, paths, runtime, len(transfer))
    try:
        trained = fit(model, transfer, val, objective, training, runtime, params.seed, paths.training_log(name),
                      distributed, resume)
    except BaseException as error:
        resume.release()  # a failed run's folder goes unless it holds saves to resume from
        if isinstance(error, TrainingDiverged):
            key = section_of(name, params)
            fate = "is kept as it was" if paths.model(name).exists() else "is not written"
            raise error.about(name, f"{paths.model(name)} {fate}. Lower {key}.optimizer.lr, warm up "
                                    f"({key}.schedule.warmup) or clip the gradients "
                                    f"({key}.regularization.grad_clip)") from None
        raise
    if runtime.is_main:
        save_checkpoint(paths.model(name), trained.state_dict, config, trained.metrics)
        if heads is not None:
            with atomic_path(heads) as tmp:
                torch.save(trained.objective_state_dict, tmp)
        resume.remove()  # the model is saved: its training states have served
    shutdown(runtime)
    return trained.metrics


def section_of(name: str, params: Params) -> str:
    """The params section that holds model `name`'s optimizer: its own, or the student section it takes."""
    if name == "teacher":
        return "teacher"
    return f"distill.{name}" if name in params.distill and "optimizer" in params.distill[name].overrides else "student"
