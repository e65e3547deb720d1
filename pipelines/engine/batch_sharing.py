"""Which processes hold a share of each global batch, for an objective whose state spans the whole training set
and is updated from every batch (crd's memory banks: one row per training image).

Under ddp and fsdp each process computes the loss of its own share of the rows, so such an objective gathers
the whole global batch over the processes to update its state alike on every one; under pipeline parallelism
the last stage alone computes the loss and sees every row of each micro-batch, and on one process there is
nothing to gather. A strategy's `prepare` says which through `SharesBatches`; the loop never looks at it.
State that every process of the group updates alike needs no broadcast: ddp leaves the buffers named by
`buffers_in_step` out of those it sends from rank 0 before every forward.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn
from torch.distributed import ProcessGroup


@runtime_checkable
class SharesBatches(Protocol):
    """An objective (or a loss term) whose state is updated from the whole of every global batch."""

    def share_batches_over(self, group: ProcessGroup | None) -> None:
        """`group`: the processes each computing the loss of a share of every batch, over which to gather the
        batch; None: this process sees every row of the batches whose loss it computes (nothing to gather)."""
        ...

    def buffers_in_step(self) -> list[str]:
        """Its buffers (names relative to it) that every process of the group updates alike from the gathered
        batch, so that no process needs another's copy."""
        ...


def share_batches(objective: nn.Module, group: ProcessGroup | None) -> None:
    """Tell the objective which processes share each batch (`SharesBatches`); nothing if it keeps no such state."""
    if isinstance(objective, SharesBatches):
        objective.share_batches_over(group)


def buffers_in_step(objective: nn.Module) -> list[str]:
    """The objective's buffers that it keeps alike on every process itself; none if it keeps no such state."""
    return objective.buffers_in_step() if isinstance(objective, SharesBatches) else []
