"""The `speed` section: the GPU speed paths of the training stages. Each one applies on CUDA devices only;
on the CPU all are off whatever they say, so CPU results stay those of plain float32 eager PyTorch (and the
tests, which run on CPUs, check exactly that). They change a GPU run's numbers slightly (bf16, compile), so
they are params of the training stages like the rest."""

from __future__ import annotations

from pydantic import Field

from pipelines.config.base import Section


class SpeedParams(Section):
    bf16: bool = True  # autocast forward passes to bfloat16 (fsdp also gathers weights in bf16); steps stay fp32
    compile: bool = False  # torch.compile the model: slower first steps, faster after (worth it for long runs)
    channels_last: bool = True  # NHWC memory format for the model and its batches (faster convolutions)
    pin_memory: bool = True  # page-locked host batches, copied to the GPU without blocking
    data_on_device: bool = True  # keep the training set's pixels on the GPU when they fit ...
    data_on_device_max_share: float = Field(default=0.25, gt=0.0, le=1.0)  # ... in this share of its free memory
