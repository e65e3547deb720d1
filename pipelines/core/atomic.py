"""Atomic artifact writes: write beside the target, rename into place only once the write succeeded.

A crash or an error mid-write therefore never leaves a half-written artifact where a reader (or DVC)
would take it for a finished one; what a killed writer left beside it (its temporary file or folder, named
with its pid) is swept by the next write of the same artifact.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path (file or folder) beside `path`; on success it replaces `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            # os.replace cannot swap a folder over a non-empty one: move the old one aside first.
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _sweep_leftovers(path: Path) -> None:
    """Remove the temporary copies of `path` that writers no longer running left (a killed stage's); an old
    version moved aside only while `path` itself is back in place."""
    for leftover in path.parent.glob(glob.escape(f".{path.name}.") + "*-*"):
        kind, _, pid = leftover.name.removeprefix(f".{path.name}.").partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not _running(int(pid)) and (kind == "tmp" or path.exists()):
            _remove(leftover)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
