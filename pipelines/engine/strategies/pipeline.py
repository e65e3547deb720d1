"""`distributed.strategy: pipeline`, pipeline parallelism: the model's layers split across the processes, with torch's
`torch.distributed.pipelining` (as torchtitan's pipeline parallelism, without tracing the model).

Each rank holds a contiguous run of the model's layer sequence (the built-in models' `layer_sequence`: input
normalization, each layer or residual block of the feature extractor, the head), the runs balanced by parameter
count; only that run is on its device, and its optimizer holds only its parameters. Every global batch flows through
the ranks in `distributed.microbatches` equal micro-batches, scheduled GPipe (all forwards, then all backwards) or
1F1B (`pipeline_schedule`); the last rank computes the objective's loss on each micro-batch's logits. torch divides
the stage's gradients by the number of micro-batches (the last rank the objective's own too), so a step's gradient
is that of the mean of the micro-batches' mean losses: what one process accumulating gradients over the same
micro-batches computes (tests/test_distributed.py checks it). Validation flows through the same pipeline; at the
end the main rank gathers every rank's layers (and the last one's objective), so it saves the whole model.

An objective that reads inner layers (feature-based distillation) captures their outputs with forward hooks, which
fire on the rank that holds the layer: each stage passes what its layers captured, and what it received of the
earlier stages', on to the next (`Carrying`, through the objective's hooks as `LayerCarry` reads them), and the last
rank hands them to the objective with the logits, so gradients flow back to the layers that made them. A live
teacher (an objective's `LiveModel`) runs in inference mode under the same strategy: cut into the same number of
stages by its own parameter counts, each rank running its run of the teacher's layers (without gradients) beside its
run of the model's, the teacher's activations and captured layers passed along with the model's; the last rank hands
them to the objective, which then does not run the teacher itself. A teacher that cannot be cut (no
`layer_sequence`) runs whole on the last rank.

A pipeline's tensors keep one shape from step to step, hence its limits: `train.batch_size` must be a multiple of
`microbatches`, and an epoch's last, incomplete batch is left out. The EMA, early stopping's best weights and the L1
penalty's gradient work on each rank's own layers (`held`), kept under the whole model's names: a resumable run's
save is read by a pipeline of another number of stages, or by another strategy (pipelines/engine/resume/).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from pipelines.config.base import ParamsError
from pipelines.config.distributed import DistributedParams
from pipelines.config.training import GradClipParams
from pipelines.data.images import ImageSet
from pipelines.engine.batch_sharing import share_batches
from pipelines.engine.capture import LiveModel, live_models_of
from pipelines.engine.inference import ValidationSplit, val_metrics
from pipelines.engine.objective import Objective
from pipelines.engine.optim import clip_gradients
from pipelines.engine.runtime import Runtime
from pipelines.engine.strategies.base import (BatchOf, Layout, StateDict, StepTerms, compile_module, full_state_dict,
                                               place)
from pipelines.engine.strategies.pipeline_carry import Key, LayerCarry
from pipelines.engine.strategies.pipeline_stages import Carrying, held_by_stage, pipeline_steps, split_layers

log = logging.getLogger(__name__)

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


class PipelineParallel:
    """This rank's run of the model's layers as one stage of the pipeline (see the module's doc)."""

    def __init__(self, runtime: Runtime, params: DistributedParams) -> None:
        self.runtime, self.params = runtime, params
        self.rank, self.last_rank = runtime.rank, runtime.world_size - 1

    def prepare(self, model: nn.Module, objective: Objective, train_set: ImageSet, batch_size: int) -> Layout:
        """Cut the model (and each live teacher) into the ranks' runs of layers, then build this rank's stage
        and the schedule for micro-batches of `batch_size` / `microbatches` images."""
        place(model, objective, train_set, self.runtime, on_device=False)  # each rank moves its own layers
        share_batches(objective, None)  # the last stage, which alone computes the loss, sees every row
        self.model, self.objective, self.batch_size = model, objective, batch_size
        self.carry = LayerCarry(objective)
        self.parts = split_layers(model, self.runtime.world_size)
        self.stage_layers = nn.Sequential(*self.parts[self.rank])
        # Under the whole model's names, so that a save is resumed by a pipeline of another number of stages.
        self.held = held_by_stage(model, self.parts[self.rank])
        is_last = self.rank == self.last_rank
        layout = Layout(trained=[*self.stage_layers.parameters(), *(objective.parameters() if is_last else ())],
                        held=self.held,
                        saved=nn.ModuleDict({"model": self.held, **({"objective": objective} if is_last else {})}),
                        steps_per_epoch=pipeline_steps(len(train_set), batch_size, self.params.microbatches),
                        batch_shares=1,  # every stage sees every row of the batch
                        loss_rank=self.last_rank)  # the only one that sees the losses
        self.trained = layout.trained
        self.frozen = self.cut_live_models(live_models_of(objective))  # each live teacher cut into stages
        self._batch_of: BatchOf | None = None
        self._recorded: list[StepTerms] = []
        self._validating = False
        self._build_stage((batch_size // self.params.microbatches, *train_set.images.shape[1:]))
        return layout

    def cut_live_models(self, live: list[LiveModel]) -> list[tuple[LiveModel, list[list[nn.Module]]]]:
        """Each live teacher and the runs of its layers the stages hold, cut as the model is (by its own
        parameter counts), run by the stages beside the model's from now on. One that cannot be cut runs whole
        on the last stage, beside the loss."""
        split = []
        for frozen in live:
            module = frozen.module
            name, total = type(module).__name__, sum(parameter.numel() for parameter in module.parameters())
            try:
                parts = split_layers(module, self.runtime.world_size)
            except ParamsError:
                if self.runtime.is_main:
                    log.info("the live %s cannot be cut into stages: it runs whole on the last one", name)
                module.to(self.runtime.device if self.rank == self.last_rank else "cpu")
                continue
            split.append((frozen, parts))
            frozen.runs_elsewhere = True
            if self.runtime.is_main:
                held = sum(parameter.numel() for layer in parts[self.rank] for parameter in layer.parameters())
                log.info("the live %s runs in the pipeline's %d stages: this one holds %d of its %d parameters",
                         name, self.runtime.world_size, held, total)
        return split

    @torch.no_grad()
    def _build_stage(self, microbatch: tuple[int, ...]) -> None:
        """This rank's pipeline stage and schedule, with the shapes of its input and output given (torch would
        otherwise infer them by running the stage once on uninitialized tensors, which batch norm's running
        statistics would take in): one micro-batch of zeros through the model (and live teachers) in eval mode,
        stage by stage, each layer visiting the device for its shapes and dtypes (under autocast), so that no
        device ever holds more than its run and one other layer. It also tells which stage makes each inner
        layer's output that the objective reads: which those are, one forward of the whole models in host
        memory, where `fit` left them, says."""
        self.model.eval()
        models = [self.model, *(frozen.module for frozen, _ in self.frozen)]
        cuts = [self.parts, *(parts for _, parts in self.frozen)]
        images = torch.zeros(microbatch, device=self.runtime.device)
        boundaries = [[images] for _ in models]  # per model, what enters each stage, then its output
        made: list[dict[Key, tuple[torch.Tensor, bool]]] = []  # per stage: what it captured, and if it is trained

        def run(stage: int, parts: list[nn.Module], bounds: list[torch.Tensor]) -> None:
            output = bounds[-1]
            for layer in parts:
                output = layer.to(self.runtime.device)(output)
                if stage != self.rank:
                    layer.to("cpu")  # another rank runs it: only this rank's run stays on its device
            bounds.append(output)

        with self.runtime.autocast():  # bf16 activations between the stages when it applies
            whole = torch.zeros(microbatch, device=next(self.model.parameters()).device)
            wanted = {key for model in models for key in self.carry.made_by(partial(model, whole))}
            for stage in range(len(self.parts)):
                made.append({})
                for index, (parts, bounds) in enumerate(zip(cuts, boundaries)):
                    captured = self.carry.made_by(partial(run, stage, parts[stage], bounds))
                    made[-1].update({key: (value, index == 0) for key, value in captured.items()})
        self.model.train()
        missed = wanted - {key for part in made for key in part}
        if missed:
            raise ParamsError(f"distributed.strategy pipeline: the student's loss reads layer(s) "
                              f"{', '.join(sorted(self.carry.name(key) for key in missed))}, which a pipeline does "
                              f"not run as one (it runs their layers one by one); name one of those layers")
        self.carried = [key for part in made for key in part]
        # Activations between stages carry gradients back, a teacher's and the images entering the first do not.
        rank, carried_in = self.rank, [pair for part in made[: self.rank] for pair in part.values()]
        inputs = [(boundaries[0][rank], rank > 0), *((bounds[rank], False) for bounds in boundaries[1:] if rank > 0),
                  *carried_in]
        outputs = [(boundaries[0][rank + 1], True), *((bounds[rank + 1], False) for bounds in boundaries[1:]),
                   *carried_in, *made[rank].values()]
        frozen: list[nn.Module] = [nn.Sequential(*parts[rank]) for _, parts in self.frozen]
        stage_module = Carrying(self.stage_layers, frozen, self.carry, list(made[rank]), first=rank == 0)
        this_stage = PipelineStage(stage_module, rank, self.last_rank + 1, self.runtime.device,
                                   input_args=tuple(value.requires_grad_(grad) for value, grad in inputs),
                                   output_args=tuple(value.requires_grad_(grad) for value, grad in outputs))
        self.schedule = SCHEDULES[self.params.pipeline_schedule](this_stage, self.params.microbatches,
                                                                 loss_fn=self._loss)
        compile_module(self.stage_layers, self.runtime)

    def backward(self, step_rows: torch.Tensor, batch_of: BatchOf) -> Iterator[StepTerms]:
        """Run the step's forwards and backwards through the pipeline; on the last rank, yield each
        micro-batch's size, loss and terms (other ranks see no loss)."""
        self._batch_of, self._recorded = batch_of, []
        with self.runtime.autocast():
            if self.rank == 0:
                self.schedule.step(batch_of(step_rows).images)
            elif self.rank == self.last_rank:
                self.schedule.step(target=step_rows)  # split into micro-batches as the images are
                # torch divides the gradients of the stage's layers by the micro-batches, not those of the
                # objective's own parameters (a connector, crd's heads), which live outside the stage
                for parameter in self.objective.parameters():
                    if parameter.grad is not None:
                        parameter.grad.div_(self.params.microbatches)
            else:
                self.schedule.step()
        yield from self._recorded

    def reads(self, step_rows: torch.Tensor) -> list[torch.Tensor]:
        """The first stage reads the step's images at once; the last reads each micro-batch's rows, as the
        schedule splits them (not gathered ahead)."""
        return [step_rows] if self.rank == 0 else []

    def _loss(self, output: tuple[torch.Tensor, ...], rows: torch.Tensor) -> torch.Tensor:
        """The objective's loss on one micro-batch's logits (and the inner layers' outputs carried along):
        the objective runs with them as its model's output and its hooks' captures."""
        logits, *teachers_and_carried = output
        teachers, carried = teachers_and_carried[: len(self.frozen)], teachers_and_carried[len(self.frozen):]
        if self._validating:  # the schedule runs forwards only, and still asks for a loss: none is wanted
            return logits.new_zeros(())
        for (frozen, _), teacher_output in zip(self.frozen, teachers):
            frozen.output = teacher_output  # a live teacher's logits, from its last stage
        self.carry.take(dict(zip(self.carried, carried)))
        assert self._batch_of is not None  # set by backward, which runs the schedule
        loss, terms = self.objective(Given(logits), self._batch_of(rows))
        self._recorded.append((len(rows), loss.detach(), {name: value.detach() for name, value in terms.items()}))
        return loss

    def clip_gradients(self, clip: GradClipParams | None) -> None:
        """By norm, the norm of every stage's gradients together (all-reduced), as in one process."""
        if clip is None or clip.by == "value":
            return clip_gradients(self.trained, clip)
        local = torch.nn.utils.get_total_norm([parameter.grad for parameter in self.trained
                                               if parameter.grad is not None])
        squared = local.to(self.runtime.device).pow(2)
        dist.all_reduce(squared)
        torch.nn.utils.clip_grads_with_norm_(self.trained, clip.max, squared.sqrt())

    def epoch_means(self, sums: dict[str, torch.Tensor | float]) -> dict[str, float]:
        """Only the last rank saw the losses: it computes the means and sends them to every rank."""
        means: list[dict[str, float] | None] = [None]
        if self.rank == self.last_rank:
            means = [{name: float(value) / float(sums["count"]) for name, value in sums.items() if name != "count"}]
        dist.broadcast_object_list(means, src=self.last_rank)
        result = means[0]
        assert result is not None  # the last rank's, broadcast
        return result

    @torch.no_grad()
    def validate(self, model: nn.Module, split: ValidationSplit) -> dict[str, float]:
        """The validation split through the pipeline in eval mode, in batches of the training batch's shape
        (the last one padded); the last rank scores the logits and sends the metrics to every rank."""
        self.stage_layers.eval()
        self._validating = True
        logits: list[torch.Tensor] = []
        with self.runtime.autocast():
            self._validate_batches(split.val_set, logits)
        self.stage_layers.train()
        self._validating = False
        metrics = [val_metrics(torch.cat(logits), split.val_set.labels) if self.rank == self.last_rank else None]
        dist.broadcast_object_list(metrics, src=self.last_rank)
        result = metrics[0]
        assert result is not None  # the last rank's, broadcast
        return result

    def _validate_batches(self, val_set: ImageSet, logits: list[torch.Tensor]) -> None:
        for start in range(0, len(val_set), self.batch_size):
            images = val_set.images[start : start + self.batch_size]
            count = len(images)
            if self.rank == 0:
                padded = torch.zeros((self.batch_size, *images.shape[1:]), dtype=torch.uint8)
                padded[:count] = torch.as_tensor(images)
                self.schedule.eval(padded.to(self.runtime.device).float().div_(255.0))
            elif self.rank == self.last_rank:
                unused = torch.zeros(self.batch_size)  # the loss function's target, ignored
                logits.append(self.schedule.eval(target=unused)[0][:count].float().cpu())
            else:
                self.schedule.eval()

    def state_dicts(self) -> tuple[StateDict, StateDict]:
        """Every rank sends the weights of its layers to the main rank, which loads them into its whole model;
        the last rank sends what the objective learned (a connector) too."""
        owned = {name: tensor.detach().cpu() for name, tensor in self.held.state_dict().items()}
        learned = self.objective.state_dict() if self.rank == self.last_rank else {}
        parts: list[tuple[dict, dict]] | None = None
        if self.rank == 0:
            parts = [({}, {}) for _ in range(self.runtime.world_size)]
        dist.gather_object((owned, {name: tensor.cpu() for name, tensor in learned.items()}), parts, dst=0)
        if parts is None:
            return {}, {}
        self.model.load_state_dict({name: tensor for part, _ in parts for name, tensor in part.items()})
        self.objective.load_state_dict(parts[-1][1])
        return full_state_dict(self.model), full_state_dict(self.objective)


class Given(nn.Module):
    """The model as the last stage's loss sees it: its output, already computed by the pipeline."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.output
