"""`at`: attention transfer (Zagoruyko & Komodakis, 2017): for each (student layer, teacher layer) pair, the
spatial attention map of each image, sum over channels of |activation|^p, flattened and L2-normalized; the
term is the mean squared difference between the student's and the teacher's maps, averaged over the pairs.
A student map of another spatial size is resized (bilinear) to the teacher's; channels may differ."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from pipelines.config.base import Section
from pipelines.engine.objective import Batch
from pipelines.kd.base import Context
from pipelines.kd.feature_term import FeatureTerm


class ATOptions(Section):
    # (student layer, teacher layer) module paths, each producing [B, C, H, W] maps
    layers: list[tuple[str, str]] = Field(default_factory=lambda: [("features", "features")], min_length=1)
    p: float = Field(default=2.0, gt=0.0)  # the exponent of |activation|


class AT(FeatureTerm[ATOptions]):
    Options = ATOptions

    def __init__(self, pairs: list[tuple[str, str]], context: Context, keys: tuple[str, str], p: float) -> None:
        super().__init__(pairs, context, keys)
        self.p = p

    @classmethod
    def teacher_layers(cls, options: ATOptions) -> list[tuple[str, bool]]:
        return [(teacher, False) for _, teacher in options.layers]

    @classmethod
    def create(cls, options: ATOptions, context: Context) -> AT:
        return cls(list(options.layers), context, (f"{context.key}.layers", f"{context.key}.layers"), options.p)

    def build(self, shapes: list[tuple[torch.Size, torch.Size]]) -> None:
        for student, teacher in shapes:
            if len(student) != 4 or len(teacher) != 4:
                raise ValueError("at: layers must produce maps [B, C, H, W]; "
                                 f"got {tuple(student)} and {tuple(teacher)}")

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        losses = [(attention(student, self.p, teacher.shape[2:]) - attention(teacher, self.p)).pow(2).mean()
                  for student, teacher in self.features(batch)]
        return torch.stack(losses).mean()


def attention(features: torch.Tensor, p: float, size: torch.Size | None = None) -> torch.Tensor:
    """Each image's attention map [B, H*W]: sum over channels of |features|^p, resized to `size`, L2-normalized."""
    maps = features.float().abs().pow(p).sum(dim=1, keepdim=True)
    if size is not None and maps.shape[2:] != size:
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return F.normalize(maps.flatten(1), dim=1)
