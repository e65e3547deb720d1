"""Resumable training as one component, as torchtitan's checkpointer is: what a run saves (`state.py`: the
trained modules and optimizer through DCP's `Stateful`, the EMA, early stopping, the schedule, the progress),
when (once `resume.every_minutes` have passed, by `clock.py`, read every 10 steps and at each epoch end),
where (`resume.folder`/<model>, claimed by one run at a time and swept of a killed run's leftovers:
`folder.py`), which saves a run may resume (`fingerprint.py`), and how saves are written, pruned, loaded and
removed (`saves.py`). The loop sees `Resume` (or `NoResume` under `resume.mode: never`) and `TrainingState`
only; params' `resume` section controls it (pipelines/config/resume.py). The model files a stage writes at
its end are another matter (pipelines/engine/checkpoint.py)."""

from pipelines.engine.resume.saves import NoResume, Resume, resume_for
from pipelines.engine.resume.state import Progress, TrainingState

__all__ = ["NoResume", "Progress", "Resume", "TrainingState", "resume_for"]
