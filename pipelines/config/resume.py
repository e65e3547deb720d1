"""The `resume` section: resumable training. A training stage saves its whole training state now and then
(pipelines/engine/resume/); a run of the same params that starts after a crash, a kill or a torchrun restart
continues from the last complete save instead of from scratch. The saved states live outside the DVC outputs
and are removed once the stage succeeds. (The model files a stage writes are another matter:
pipelines/engine/checkpoint.py.)"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.config.base import Section


class ResumeParams(Section):
    # auto: save the training state, continue from it after a failure; never: neither
    mode: Literal["auto", "never"] = "auto"
    # save once this many minutes have passed since the last save, by the main process's clock, read every 10
    # optimizer steps and at each epoch end (null: at every epoch end only; 0: at every reading, as the tests ask)
    every_minutes: float | None = Field(default=10.0, ge=0.0)
    # saved states kept while training (a damaged newest one leaves an older one)
    keep_latest: int = Field(default=2, ge=1)
    folder: str = ".resume"  # relative to the project root, or absolute; several nodes need one they all share
