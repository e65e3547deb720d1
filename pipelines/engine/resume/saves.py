"""Resumable training's saves: the whole state of a run of `fit` (pipelines/engine/resume/state.py), saved with
torch.distributed.checkpoint (DCP) once `resume.every_minutes` have passed since the last save (at the next epoch
end or clock reading, `clock.py`), and loaded when a run of the same params starts again after a crash, a
SIGKILL or a torchrun restart (`resume.mode: auto`).

A save costs the training little. DCP's `async_save` copies the state to CPU memory (a copy even of what is
on the CPU already: training goes on changing the weights) and writes the copy from a thread of its own while
training goes on; the save is completed once its files are written, at the next save or when training ends
or fails. When a save is due is the main process's clock's to say (`clock.py`). Under torch.distributed the
writing thread's collectives go through a gloo group of their own, never the one the training's collectives
use (as torchtitan does).

A save is a folder `<resume.folder>/<model>/step-<N>/` holding
    DCP's files     the model and the objective's parameters, the optimizer (sharded as they train: FSDP's
                    shards, a pipeline stage's layers), the EMA weights, the progress (epoch, step, the data
                    order's generator, the schedule, early stopping)
    rank-<R>.pt     what differs from rank to rank: its RNG states (dropout) and its share of the epoch's sums;
                    the main rank's also the training log's history (pipelines/engine/training_log.py), from
                    which the resumed run writes its dvclive files anew
    state.json      the fingerprint of what was trained (params, input files), the step, the processes
Every rank writes into `step-<N>.partial/`, which the main rank renames once DCP's write is over (it is over
on the main rank only once every rank's files are written): a folder without the suffix is complete, and the
next run sweeps partial ones. A run whose fingerprint differs (the params or the data changed) starts over
and removes the saves; one whose newest save cannot be read stops, naming it, and keeps the saves before it.
The stage removes them once it succeeds.

A save may be resumed by another number of processes (pipelines/engine/resume/fingerprint.py says when): every rank
saves what it holds under the whole model's names, DCP reads each tensor's saved pieces into however the loading
ranks hold it (other FSDP shards, another pipeline split), the epoch's loss sums go to the rank that sums the
losses, and each rank takes the RNG states of the saved rank of its number (rank 0's where there is none).

DCP is imported by the first save or load, not with this module: a short run that never saves does not pay
for its import.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

import torch
import torch.distributed as dist

from pipelines.config import Params
from pipelines.config.distributed import DistributedParams
from pipelines.config.resume import ResumeParams
from pipelines.config.training import TrainingParams
from pipelines.core.paths import Paths
from pipelines.core.errors import CheckpointError, SaveFolderError, first_line
from pipelines.engine.runtime import Runtime
from pipelines.engine.training_log import History
from pipelines.engine.resume.clock import SaveClock
from pipelines.engine.resume.fingerprint import run_fingerprint
from pipelines.engine.resume.folder import check_shared, claim
from pipelines.engine.resume.state import Progress, TrainingState

log = logging.getLogger(__name__)

# DCP says it assumes one process when told so (`no_dist`), from its writing thread too, where no
# `warnings.catch_warnings` of the caller's reaches.
warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)

PARTIAL = ".partial"


class Writing(NamedTuple):
    """A save that DCP writes in the background: its write's future, its folders, its step."""

    future: Future[Any]
    partial: Path
    final: Path
    step: int


class Resume:
    """The saved training states of one model: find the newest complete one, save, load, remove."""

    def __init__(self, folder: Path, params: ResumeParams, runtime: Runtime, fingerprint: str,
                 timeout_s: int = DistributedParams().timeout_s) -> None:
        self.folder, self.params, self.runtime, self.fingerprint = folder, params, runtime, fingerprint
        self.timeout = timedelta(seconds=timeout_s)  # of the gloo groups' collectives (distributed.timeout_s)
        self.lock: IO[str] | None = None  # the main rank's hold on the folder (pipelines/engine/resume/folder.py)
        self.resumed: Path | None = None  # the save this run continues from
        self.history: History | None = None  # the training log's history in that save (the main rank's)
        self.writing: Writing | None = None  # the save being written in the background
        self.clock = SaveClock(params.every_minutes, runtime)
        self.save_group: dist.ProcessGroup | None = None  # where DCP's writing thread meets (torch.distributed)

    def start(self, state: TrainingState, fresh: Progress, loss_rank: int) -> tuple[Progress, dict[str, Any]]:
        """Claim the folder and load the newest save of this run into `state`: the progress to continue from
        and this rank's share of the epoch's loss sums; `fresh` and no sums when there is none."""
        if self.runtime.distributed:  # every rank creates the groups, in the same order
            self.save_group = dist.new_group(backend="gloo", timeout=self.timeout)
            self.clock.join(self.timeout)
        self.resumed = self.latest()
        sums: dict[str, Any] = {}
        progress = fresh
        if self.resumed is not None:
            progress, sums = self.load(self.resumed, state.to_load(), loss_rank)
            state.restore(progress)
        self.clock.restart()  # `every_minutes` count from the first step
        return progress, sums

    def due(self, step: int) -> bool:
        """Whether to save after optimizer step `step`, within an epoch: see `clock.py`."""
        return self.clock.due(step)

    def end_of_epoch(self, state: TrainingState, progress: Progress, sums: dict[str, Any],
                     history: History | None) -> None:
        """An epoch has ended at `progress`: save if the clock says so (`clock.py`)."""
        if self.clock.due_at_epoch_end():
            self.save(state, progress, sums, history)

    def latest(self) -> Path | None:
        """The newest complete save of this fingerprint, the same on every rank (the main rank decides). The
        main rank first claims the folder for this run, then sweeps what killed runs left half-written, and
        saves of other params or data. A problem the main rank finds is raised on every rank."""
        claimed: list[SaveFolderError | None] = [None]
        if self.runtime.is_main:
            try:
                self.lock = claim(self.folder)
            except SaveFolderError as error:
                claimed = [error]
        self._raise_everywhere(claimed)
        if self.runtime.nodes > 1:
            check_shared(self.folder, self.runtime)
        chosen: list[Path | CheckpointError | None] = [None]
        if self.runtime.is_main:
            for partial in self.folder.glob(f"step-*{PARTIAL}"):
                shutil.rmtree(partial, ignore_errors=True)
            saves = self._complete()
            try:
                if saves and self._saved_fingerprint(saves[-1]) != self.fingerprint:
                    log.info("%s: saved training states are of other params or data: starting over", self.folder)
                    for save in saves:
                        shutil.rmtree(save)
                    saves = []
                chosen = [saves[-1] if saves else None]
            except CheckpointError as error:
                chosen = [error]
        return self._raise_everywhere(chosen)

    def _raise_everywhere(self, found: list[Any]) -> Any:
        """The main rank's `found[0]`, sent to every rank; raised there if it is an error (none waits for the
        main one in a collective it will never join)."""
        if self.runtime.distributed:
            dist.broadcast_object_list(found, src=0)
        if isinstance(found[0], Exception):
            raise found[0]
        return found[0]

    @contextmanager
    def saving(self) -> Iterator[None]:
        """The span of the training: the save still being written when it ends, or fails, is waited for and
        completed (the stage then removes the saves, or keeps them to resume from)."""
        try:
            yield
        except BaseException:
            from torch.distributed.checkpoint.api import CheckpointException

            try:
                self.finish()
            except (Exception, CheckpointException) as error:  # the training's own error is the one to report
                log.warning("the last save of the training state failed too: %s", first_line(error))
            raise
        self.finish()

    def save(self, state: TrainingState, progress: Progress, sums: dict[str, Any], history: History | None) -> None:
        """Start saving `state` at `progress` with this rank's RNG states and `sums` (and on the main rank the
        training log's `history`): DCP writes it in the background, once the save before it is complete."""
        import torch.distributed.checkpoint as dcp

        self.finish()
        self.clock.restart()
        final = self.folder / f"step-{progress.step:08d}"
        partial = final.with_name(final.name + PARTIAL)
        partial.mkdir(parents=True, exist_ok=True)
        torch.save(_rank_state(self.runtime, sums, history), partial / f"rank-{self.runtime.rank}.pt")
        # What every rank holds a copy of is written from the main rank's: copies can differ (batch norm's
        # running statistics, which each rank updates from its share of the batch; DDP sends the main rank's
        # to the others before each forward), and the main rank's are those the final checkpoint keeps.
        written = dcp.async_save(state.to_save(progress), checkpoint_id=partial, process_group=self.save_group,
                                 no_dist=not self.runtime.distributed,
                                 planner=dcp.DefaultSavePlanner(dedup_save_to_lowest_rank=True))
        # (a future: DCP's default stager has copied the state before async_save returns)
        self.writing = Writing(cast(Future, written), partial, final, progress.step)

    def finish(self) -> None:
        """Wait for the save being written in the background, if any, and complete it: the main rank records
        it (state.json), renames it complete and removes all but the newest `keep_latest` saves."""
        if self.writing is None:
            return
        writing, self.writing = self.writing, None
        writing.future.result()
        if self.runtime.is_main:
            (writing.partial / "state.json").write_text(json.dumps(
                {"fingerprint": self.fingerprint, "step": writing.step, "world_size": self.runtime.world_size}))
            if writing.final.exists():  # saved at this step before (by a run since resumed from an earlier save)
                shutil.rmtree(writing.final)
            writing.partial.rename(writing.final)
            for old in self._complete()[: -self.params.keep_latest]:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, saved: Path, loaded: dict[str, Any], loss_rank: int = 0) -> tuple[Progress, dict[str, Any]]:
        """Load the save `saved` into `loaded` (TrainingState.to_load's, in place), set this rank's RNG states
        back and, on the main rank, `history`; return the progress and this rank's share of the epoch's sums
        (all of them on `loss_rank`, the rank that sums the losses, when the save was made by another number
        of processes)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        try:
            saved_world = json.loads((saved / "state.json").read_text())["world_size"]
            dcp.load(loaded, checkpoint_id=saved, no_dist=not self.runtime.distributed)
            resharded = saved_world != self.runtime.world_size  # then every saved rank's sums are needed
            ranks = {rank: torch.load(saved / f"rank-{rank}.pt", map_location="cpu", weights_only=True)
                     for rank in (range(saved_world) if resharded else [self.runtime.rank])}
            self.history = ranks[0]["log"] if self.runtime.is_main else None
        except (Exception, CheckpointException) as error:  # DCP's wraps a failure on any rank (a BaseException)
            raise CheckpointError(
                f"{saved}: a saved training state that cannot be read ({first_line(error)}). Remove that "
                f"folder to resume from the save before it, or set resume.mode: never to start over"
            ) from None
        own = ranks[self.runtime.rank] if self.runtime.rank in ranks else ranks[0]  # a rank the save lacks: rank 0
        torch.set_rng_state(own["cpu_rng"])
        if own["cuda_rng"] is not None:
            torch.cuda.set_rng_state(own["cuda_rng"], self.runtime.device)
        sums = own["sums"]
        progress = loaded["progress"]
        log.info("resuming from %s (step %d, epoch %d)", saved, progress.step, progress.epoch + 1)
        if resharded:
            log.info("the save was made by %s, this run has %d: the weights and optimizer state are resharded",
                     f"{saved_world} process{'es' if saved_world > 1 else ''}", self.runtime.world_size)
            # The epoch's sums so far, all on one rank (they are all-reduced at the epoch's end). A pipeline's
            # first stages have none: the keys are those of any rank.
            keys = {key: None for rank in ranks.values() for key in rank["sums"]}
            total = {key: sum(rank["sums"].get(key, 0.0) for rank in ranks.values()) for key in keys}
            sums = total if self.runtime.rank == loss_rank else {key: value * 0 for key, value in total.items()}
        return progress, {key: value.to(self.runtime.device) if isinstance(value, torch.Tensor) else value
                          for key, value in sums.items()}

    def remove(self) -> None:
        """Remove every save of this model and the folder (the stage succeeded), letting go of its lock."""
        if self.runtime.is_main:
            shutil.rmtree(self.folder, ignore_errors=True)
            if self.folder.parent.exists() and not any(self.folder.parent.iterdir()):
                self.folder.parent.rmdir()  # the folder of every model's saves, now empty
            self.release()

    def release(self) -> None:
        """Let go of the folder after a run that failed: it goes too unless it holds a save to resume from (a
        killed run's is swept by the next run of any model: pipelines/engine/resume/folder.py's `claim`)."""
        if not self.runtime.is_main or self.lock is None:
            return
        lock, self.lock = self.lock, None
        if not self._complete():
            self.remove()
        lock.close()

    def _complete(self) -> list[Path]:
        saves = [path for path in self.folder.glob("step-*") if not path.name.endswith(PARTIAL)]
        return sorted(saves, key=lambda path: path.name)

    @staticmethod
    def _saved_fingerprint(saved: Path) -> str:
        """The fingerprint `saved` was made with; CheckpointError if its state.json cannot be read (a save is
        renamed complete only after that file is written: it was damaged since, and the saves before it are
        kept rather than swept as another run's)."""
        try:
            return json.loads((saved / "state.json").read_text())["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"{saved / 'state.json'}: the record of a saved training state cannot be read ({error}). Remove "
                f"{saved} to resume from the save before it, or set resume.mode: never to start over"
            ) from None


def _rank_state(runtime: Runtime, sums: dict[str, torch.Tensor | float], history: History | None) -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state(runtime.device) if runtime.device.type == "cuda" else None
    return {"cpu_rng": torch.get_rng_state(), "cuda_rng": cuda,
            "sums": {key: value.detach().cpu() if isinstance(value, torch.Tensor) else value
                     for key, value in sums.items()},
            "log": history}


class NoResume:
    """`resume.mode: never`: a run that saves nothing and starts from scratch, with Resume's interface."""

    history: History | None = None

    def start(self, state: TrainingState, fresh: Progress, loss_rank: int) -> tuple[Progress, dict[str, Any]]:
        return fresh, {}

    def due(self, step: int) -> bool:
        return False

    def end_of_epoch(self, state: TrainingState, progress: Progress, sums: dict[str, Any],
                     history: History | None) -> None:
        """Nothing to save."""

    def saving(self) -> nullcontext[None]:
        return nullcontext()

    def save(self, state: TrainingState, progress: Progress, sums: dict[str, Any], history: History | None) -> None:
        """Nothing to save."""

    def release(self) -> None:
        """No folder held."""

    def remove(self) -> None:
        """No saves to remove."""


def resume_for(name: str, training: TrainingParams, params: Params, paths: Paths, runtime: Runtime,
               examples: int) -> Resume | NoResume:
    """The saves of model `name` trained with `training` on `examples` images, as params' `resume` section
    says: in `resume.folder`/<name>, for this run's fingerprint."""
    if params.resume.mode == "never":
        return NoResume()
    return Resume(paths.resume_states(params.resume.folder, name), params.resume, runtime,
                  run_fingerprint(name, training, params, paths, runtime, examples),
                  params.distributed_for(training).timeout_s)
