"""A student as an ONNX model (model.onnx) for serving stacks that load ONNX (ONNX Runtime, TensorRT, Triton),
written by torch.onnx's dynamo exporter and checked against torch with ONNX Runtime before it is published.

The file takes float pixels `images` [batch, C, H, W] on the [0, 1] scale (the model normalizes them itself)
and gives `logits` [batch, classes]; the batch size is free. It is published only if ONNX Runtime (CPU) gives
the same logits as torch on every image of the test split, within PARITY_ATOL, and so the same class: a file
that answers differently from the model its card describes would mislead whoever serves it. A model the
exporter refuses (an op with no ONNX function, as in some timm models), that ONNX Runtime cannot run, or
that fails the check is published without it, and `export_onnx` says why.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pipelines.core.errors import first_line

if TYPE_CHECKING:
    from pipelines.data.images import MappedImages

log = logging.getLogger(__name__)

PARITY_ATOL = 1e-4  # the largest difference allowed between a logit of ONNX Runtime and torch's
INPUT, OUTPUT = "images", "logits"  # the names of the ONNX graph's input and output
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")  # torch.onnx colours parts of its messages for terminals


@dataclass(frozen=True)
class Parity:
    """How ONNX Runtime's logits compare with torch's on a set of images."""

    images: int
    max_abs_diff: float
    other_class: int  # images whose predicted class differs

    def holds(self) -> bool:
        return self.max_abs_diff <= PARITY_ATOL and self.other_class == 0

    def describe(self) -> str:
        return (f"ONNX Runtime's logits differ from torch's by up to {self.max_abs_diff:.3g} (at most {PARITY_ATOL:g} "
                f"allowed) and {self.other_class} of the {self.images} test images get another class")


def export_onnx(model: nn.Module, images: torch.Tensor | MappedImages, path: Path, batch_size: int) -> str | None:
    """Write `model` (in eval mode) to `path` as ONNX with a free batch size, then check it on `images` (uint8
    [N, C, H, W]: the test split) with ONNX Runtime, `batch_size` images at a time. None when the file is
    written and matches torch; else why there is none (the exporter's or ONNX Runtime's reason, or the parity
    figures), and no file at `path`."""
    example = torch.zeros(2, *images.shape[1:])  # two: a batch of one would fix the batch size
    try:
        # external_data=False: one file (weights inside), so what the manifest lists is all a server needs
        torch.onnx.export(model.eval(), (example,), path, dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False)
    except Exception as error:  # noqa: BLE001 - a model the exporter refuses is published without model.onnx
        path.unlink(missing_ok=True)
        return f"torch.onnx.export refused the model: {exporter_reason(error)}"
    try:
        parity = check_parity(model, path, images, batch_size)
    except Exception as error:  # noqa: BLE001 - an op ONNX Runtime cannot run: the same as an answer that differs
        path.unlink()
        return f"ONNX Runtime could not run the exported model: {exporter_reason(error)}"
    if not parity.holds():
        path.unlink()
        return parity.describe()
    log.info("%s: ONNX Runtime gives torch's classes on all %d test images, its logits within %.3g", path.name,
             parity.images, parity.max_abs_diff)
    return None


def check_parity(model: nn.Module, path: Path, images: torch.Tensor | MappedImages, batch_size: int) -> Parity:
    """ONNX Runtime's (CPU execution provider) logits of the ONNX file at `path` against `model`'s on every
    image of `images` (uint8 [N, C, H, W])."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    max_abs_diff, other_class = torch.tensor(0.0), 0  # torch.maximum keeps a NaN: a NaN logit fails the check
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            pixels = images[start : start + batch_size].float().div_(255.0)
            expected = model(pixels)
            got = torch.from_numpy(session.run([OUTPUT], {INPUT: pixels.numpy()})[0])
            max_abs_diff = torch.maximum(max_abs_diff, (got - expected).abs().max())
            other_class += int((got.argmax(1) != expected.argmax(1)).sum())
    return Parity(len(images), max_abs_diff.item(), other_class)


def exporter_reason(error: BaseException) -> str:
    """The innermost cause of an exporter's error, on one line: torch.onnx wraps it (an op with no ONNX
    function, say) in a message of next steps for its own bug reports."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {_COLOURS.sub('', first_line(error))}"
