"""How pipeline parallelism cuts a model into stages: the runs of its layer sequence each rank holds
(`split_layers`), the part of the model's state a stage trains and saves (`held_by_stage`), the module a
stage runs (`Carrying`: its layers, the same stage's layers of a live teacher split alongside, and the inner
layers' outputs the objective reads passed along), and the steps of an epoch in whole batches
(`pipeline_steps`). pipelines/engine/strategies/pipeline.py runs these stages under torch's schedules."""

from __future__ import annotations

from itertools import accumulate, chain

import torch
from torch import nn

from pipelines.config.base import ParamsError
from pipelines.engine.strategies.pipeline_carry import Key, LayerCarry


class Carrying(nn.Module):
    """A stage's layers, and the same stage's layers of each live teacher (`frozen`, run without gradients),
    passing along the inner layers' outputs that the objective reads. The first stage takes the images, for
    every model; a later one takes each model's activations and what the earlier stages made. It returns each
    model's output, what the earlier stages made, and what its own forward captured (the values `made` of the
    objective's hooks). Gradients flow back along the trained model's tensors only."""

    def __init__(self, layers: nn.Module, frozen: list[nn.Module], carry: LayerCarry, made: list[Key],
                 first: bool) -> None:
        super().__init__()
        self.layers, self.made, self.first = layers, made, first
        self.frozen = frozen  # a plain list: a teacher's layers are neither trained nor saved with the stage
        self.carry = carry

    def forward(self, features: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        count = len(self.frozen)
        frozen_in, carried = ([features] * count, rest) if self.first else (rest[:count], rest[count:])
        output = self.layers(features)
        with torch.no_grad():
            frozen_out = [layers(inputs) for layers, inputs in zip(self.frozen, frozen_in)]
        captured = self.carry.outputs()
        return (output, *frozen_out, *carried, *(captured[key] for key in self.made))


def pipeline_steps(examples: int, batch_size: int, microbatches: int) -> int:
    """Optimizer steps per epoch under pipeline parallelism: whole batches only (the last, incomplete one would
    change the pipeline's shapes), each a multiple of `microbatches`."""
    if batch_size % microbatches:
        raise ParamsError(f"train.batch_size {batch_size} is not a multiple of distributed.microbatches "
                          f"{microbatches}: a pipeline's micro-batches are all the same size")
    return examples // batch_size


def held_by_stage(model: nn.Module, layers: list[nn.Module]) -> nn.Module:
    """A module holding the parameters and buffers of `layers` (a stage's run of `model`'s layer sequence)
    under the names they have in `model`: its state dict is the part of the model's that the stage trains."""
    owned = {id(tensor) for layer in layers for tensor in chain(layer.parameters(), layer.buffers())}
    view = nn.Module()
    for path, module in model.named_modules():
        for name, tensor in chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False)):
            if id(tensor) not in owned:
                continue
            parent = view
            for part in path.split(".") if path else ():
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            if isinstance(tensor, nn.Parameter):
                parent.register_parameter(name, tensor)
            else:
                parent.register_buffer(name, tensor, persistent=name not in module._non_persistent_buffers_set)
    return view


def split_layers(model: nn.Module, stages: int) -> list[list[nn.Module]]:
    """The model's layer sequence cut into `stages` contiguous runs of about equal parameter counts."""
    if not hasattr(model, "layer_sequence"):
        raise ParamsError(f"distributed.strategy pipeline: a {type(model).__name__} cannot be split into layers "
                          f"(the built-in cnn and resnet can); use strategy ddp or fsdp for it")
    layers: list[nn.Module] = getattr(model, "layer_sequence")()  # (typed on the built-in models only)
    if len(layers) < stages:
        raise ParamsError(f"distributed.strategy pipeline: the model has {len(layers)} layers, too few for "
                          f"{stages} stages; use fewer processes (nproc_per_node) or a deeper model")
    reached = list(accumulate(sum(parameter.numel() for parameter in layer.parameters()) for layer in layers))
    cuts: list[int] = []
    for stage in range(1, stages):  # cut where the running count comes closest to this stage's share
        share = reached[-1] * stage / stages
        cut = min(range(len(layers)), key=lambda index: abs(reached[index] - share)) + 1
        low, high = (cuts[-1] if cuts else 0) + 1, len(layers) - (stages - stage)  # a layer for every stage
        cuts.append(min(max(cut, low), high))
    bounds = [0, *cuts, len(layers)]
    return [layers[start:end] for start, end in zip(bounds, bounds[1:])]
