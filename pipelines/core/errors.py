"""Errors a user can act on: the stage runner prints their message alone (no traceback) and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Data that cannot be read as asked; the message names the file and what to change."""


class CheckpointError(DataError):
    """A checkpoint or model file that cannot be read; the message names the file and how to get it back."""


class SaveFolderError(DataError):
    """The folder a model's training states are saved in (`resume.folder`) cannot serve this run: it cannot be
    written, another run of the model holds it, or the nodes do not share it. A condition of the machine at
    run time, not of params.yaml (whose errors exit 2); the message names the folder and what to do."""


def require_input(path: Path) -> Path:
    """`path`, or DataError if no file is there: a stage's input that the stage before it writes."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; run the stage that writes it (dvc repro) or `dvc pull {path}`")
    return path


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type where it has none (EOFError of a truncated file)."""
    return (str(error).splitlines() or [type(error).__name__])[0]
