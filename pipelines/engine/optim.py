"""The optimizer of a training run: the torch.optim class that pipelines.config.optim.OPTIMIZERS names for
`optimizer.name`, its options as given, and weight decay as `regularization` states (coupled or decoupled,
biases and normalization parameters excluded unless asked)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from pipelines.config.base import ParamsError
from pipelines.config.optim import Optimizer as OptimizerParams
from pipelines.config.speed import OptimizerImplementation
from pipelines.config.training import GradClipParams, RegularizationParams

# How each optimizer decays weights when `weight_decay_mode: decoupled`: torch's own AdamW rule
# (`weight_decay` of AdamW; a flag on Adam, NAdam, RAdam); SGD, Adagrad and RMSprop have no such option,
# so a step pre-hook applies the same rule, p <- p * (1 - lr * weight_decay), before each step.
DECOUPLED_NATIVELY = {"adamw"}
DECOUPLED_BY_FLAG = {"adam", "nadam", "radam"}
# The torch.optim classes with a fused CUDA kernel (torch's Adagrad has a fused kernel on the CPU only).
FUSED_ON_CUDA = {"SGD", "Adam", "AdamW"}


def parameter_groups(
    parameters: Iterable[nn.Parameter], weight_decay: float, decay_bias_and_norm: bool
) -> list[dict[str, Any]]:
    """Two groups: weights that decay, and biases/normalization parameters (1-d tensors) that do not, unless asked."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for parameter in parameters:
        (decay if parameter.ndim > 1 or decay_bias_and_norm else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    parameters: Iterable[nn.Parameter], params: OptimizerParams, regularization: RegularizationParams,
    implementation: OptimizerImplementation = "auto",
) -> Optimizer:
    """The torch optimizer named in params over `parameters`, with weight decay applied as `regularization` states,
    in the `speed.optimizer_implementation` asked for."""
    groups = parameter_groups(parameters, regularization.weight_decay, regularization.decay_bias_and_norm)
    on_cuda = all(parameter.device.type == "cuda" for group in groups for parameter in group["params"])
    options = params.model_dump(exclude={"name"}) | implementation_options(params, implementation, on_cuda)
    # Each group carries its own weight_decay, which torch applies coupled (added to the gradient),
    # except AdamW's (decoupled); the schema refuses coupled decay for adamw.
    decoupled = regularization.weight_decay_mode == "decoupled"
    if decoupled and params.name in DECOUPLED_BY_FLAG:
        options["decoupled_weight_decay"] = True
    hooked = decoupled and params.name not in DECOUPLED_NATIVELY | DECOUPLED_BY_FLAG
    if hooked:
        for group in groups:
            group["decoupled_weight_decay"] = group.pop("weight_decay")
    optimizer = getattr(torch.optim, params.torch_class)(groups, **options)
    if hooked:
        optimizer.register_step_pre_hook(_decay_decoupled)
    return optimizer


def implementation_options(params: OptimizerParams, implementation: OptimizerImplementation,
                           on_cuda: bool) -> dict[str, bool]:
    """The torch.optim keyword that picks the implementation: auto is the fused kernel on CUDA where torch has one
    for the optimizer, else torch's own choice (foreach on CUDA, the for-loop on the CPU)."""
    fused = params.torch_class in FUSED_ON_CUDA and on_cuda
    if implementation == "fused" and not fused:
        where = "" if on_cuda else " (the weights are not on a CUDA device)"
        raise ParamsError(f"speed.optimizer_implementation: fused, but torch has no fused {params.name} kernel here"
                          f"{where}; fused exists for {', '.join(sorted(FUSED_ON_CUDA)).lower()} on CUDA. "
                          f"Valid: auto, fused, foreach, for_loop")
    return {"auto": {"fused": True} if fused else {}, "fused": {"fused": True}, "foreach": {"foreach": True},
            "for_loop": {"foreach": False}}[implementation]


@torch.no_grad()
def _decay_decoupled(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    """AdamW's decoupled decay for optimizers without it: shrink the weights, leave the gradients alone."""
    for group in optimizer.param_groups:
        factor = 1.0 - group["lr"] * group["decoupled_weight_decay"]
        if factor != 1.0:
            torch._foreach_mul_([p for p in group["params"] if p.grad is not None], factor)


@torch.no_grad()
def add_l1_gradient(model: nn.Module, coefficient: float) -> None:
    """`regularization.l1`: add the gradient of coefficient * sum |w| over the weights (tensors with more than
    one dim: not biases or normalization parameters), coefficient * sign(w), to their gradients, after
    backward: what adding the penalty to the loss gives, without reading whole weights, so each process adds
    it to the part it holds (an FSDP shard, a pipeline stage's layers). Weights without a gradient (another
    stage's layers) are left alone. A coefficient of 0 (no penalty) changes nothing."""
    if not coefficient:
        return
    for parameter in model.parameters():
        if parameter.ndim > 1 and parameter.grad is not None:
            parameter.grad.add_(parameter.sign(), alpha=coefficient)


def clip_gradients(parameters: Iterable[nn.Parameter], clip: GradClipParams | None) -> None:
    """Clip in place, after backward (and DDP's all-reduce) and before the step."""
    if clip is None:
        return
    if clip.by == "norm":
        torch.nn.utils.clip_grad_norm_(parameters, clip.max)
    else:
        torch.nn.utils.clip_grad_value_(parameters, clip.max)


