"""The folder a model's training states are saved in (`resume.folder`/<model>), as pipelines/engine/resume/saves.py
needs it: one that this run can write, that no other run of the same model is using at the same time (two
runs would take each other's saves for another params' and sweep them), and that every node sees."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import IO

import torch.distributed as dist

from pipelines.core.errors import SaveFolderError
from pipelines.engine.runtime import Runtime


def claim(folder: Path) -> IO[str]:
    """Create `folder` and hold its lock (an exclusive `flock` on `folder/.lock`) until the returned file is
    closed or the process ends; SaveFolderError if it cannot be written or another run holds it. First sweep the
    folders of other models that a killed run left holding nothing but their lock."""
    sweep_abandoned(folder.parent)
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = (folder / ".lock").open("a+")
        except OSError as error:
            raise SaveFolderError(f"resume.folder: cannot write {folder} ({error.strerror}); set it to a folder this "
                                  f"user can write, or resume.mode: never to train without saves") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise SaveFolderError(f"resume.folder: another run of this model is saving into {folder} ({holder}); "
                                  f"wait for it to end, or give this run a resume.folder of its own") from None
        if _still_in_place(lock, folder / ".lock"):
            break
        lock.close()  # swept between the open and the lock (by `sweep_abandoned` of another run): again
    lock.truncate(0)
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    lock.flush()
    return lock


def sweep_abandoned(parent: Path) -> None:
    """Remove each model folder under `parent` that holds only a lock no running process holds: what a run
    that failed or was killed before its first save left."""
    for folder in parent.glob("*/"):
        try:
            if {entry.name for entry in folder.iterdir()} != {".lock"}:
                continue
            with (folder / ".lock").open("a+") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a run holds it
                if _still_in_place(lock, folder / ".lock") and {entry.name for entry in folder.iterdir()} == {".lock"}:
                    shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:
            continue  # another run's sweep removed it first


def _still_in_place(lock: IO[str], path: Path) -> bool:
    """Whether the open lock file is still the file at `path` (not one removed, or replaced, since)."""
    try:
        return os.fstat(lock.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def check_shared(folder: Path, runtime: Runtime) -> None:
    """SaveFolderError unless every process sees the main one's `folder` (a collective): the processes of several
    nodes write each save together and resume from the one the main process picks, so each node's own folder
    would pile up halves of saves that none of them can resume."""
    token = [uuid.uuid4().hex]
    probe = folder / f".shared-{token[0]}" if runtime.is_main else None
    if probe is not None:
        probe.write_text("written by the main process; every node must see it")
    dist.broadcast_object_list(token, src=0)
    sees = (folder / f".shared-{token[0]}").exists()
    hosts: list[str | None] = [None] * runtime.world_size
    dist.all_gather_object(hosts, None if sees else socket.gethostname())
    if probe is not None:
        probe.unlink()
    blind = sorted({host for host in hosts if host is not None})
    if blind:
        raise SaveFolderError(f"resume.folder: the nodes do not share {folder} (the processes on {', '.join(blind)} "
                              f"do not see what the main process writes there); set it to a folder every node reads "
                              f"and writes (a shared file system), or resume.mode: never to train without saves")
