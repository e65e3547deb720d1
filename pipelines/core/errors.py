"""Errors a user can act on: the stage runner prints their message alone (no traceback) and exits non-zero."""

from __future__ import annotations


class DataError(ValueError):
    """Data that cannot be read as asked; the message names the file and what to change."""


class CheckpointError(DataError):
    """A checkpoint or model file that cannot be read; the message names the file and how to get it back."""

