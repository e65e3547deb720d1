"""The `speed` section: the GPU speed paths of the training stages. Each one applies on CUDA devices only;
on the CPU all are off whatever they say, so CPU results stay those of plain float32 eager PyTorch (and the
tests, which run on CPUs, check exactly that). They change a GPU run's numbers slightly (bf16, TF32, compile,
a fused optimizer), so they are params of the training stages like the rest."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.config.base import Section

# torch.compile's modes: default; reduce-overhead (CUDA graphs: least launch overhead, more memory);
# max-autotune (searches kernels: long first compile, fastest steps); max-autotune without CUDA graphs
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
# torch.optim's implementations: auto (fused where torch has a fused kernel for the optimizer, else foreach),
# fused (an error naming the optimizer where torch has none), foreach (one kernel per op over all tensors),
# for_loop (one tensor at a time)
OptimizerImplementation = Literal["auto", "fused", "foreach", "for_loop"]


class SpeedParams(Section):
    bf16: bool = True  # autocast forward passes to bfloat16 (fsdp also gathers weights in bf16); steps stay fp32
    tf32: bool = True  # float32 matmuls and convolutions on TF32 tensor cores (Ampere and later)
    cudnn_benchmark: bool = True  # cuDNN times its convolution algorithms on the first batch of each shape
    compile: bool = False  # torch.compile the model and its loss: slower first steps, faster after
    compile_mode: CompileMode = "default"
    optimizer_implementation: OptimizerImplementation = "auto"
    channels_last: bool = True  # NHWC memory format for the model and its batches (faster convolutions)
    pin_memory: bool = True  # page-locked host batches, copied to the GPU without blocking
    data_on_device: bool = True  # keep the training set (pixels, labels, stored teacher outputs) on the GPU ...
    data_on_device_max_share: float = Field(default=0.25, gt=0.0, le=1.0)  # ... what fits in this share of free memory
    prefetch: bool = True  # where the training data stays on the host: the next step's batch gathered by a thread
