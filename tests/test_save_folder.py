"""The folder a model's training states are saved in (pipelines/engine/resume/folder.py): one run of a model at a
time, and a folder that cannot be written named before any training; either refusal exits 1, as a condition of
the machine rather than of params.yaml."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from pipelines.core.errors import SaveFolderError
from pipelines.core.stage import EXIT_BAD_DATA, exit_on_user_error
from pipelines.engine.resume.folder import claim


def test_a_second_run_of_the_model_is_refused_while_the_first_holds_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / ".resume" / "teacher"
    first = claim(folder)
    with pytest.raises(SaveFolderError, match=re.escape(
            f"resume.folder: another run of this model is saving into {folder} (pid {os.getpid()} on "
            f"{socket.gethostname()}); wait for it to end, or give this run a resume.folder of its own")):
        claim(folder)
    first.close()  # the first run ends (or dies: the system lets go of its lock)
    claim(folder).close()


def test_a_stage_refused_the_folder_exits_1_with_the_message_alone(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / ".resume" / "teacher"
    first = claim(folder)
    with pytest.raises(SystemExit) as exit_:
        exit_on_user_error(claim, folder)
    assert exit_.value.code == EXIT_BAD_DATA  # the params are fine: another run holds the folder
    assert capsys.readouterr().err == (f"resume.folder: another run of this model is saving into {folder} (pid "
                                       f"{os.getpid()} on {socket.gethostname()}); wait for it to end, or give this "
                                       f"run a resume.folder of its own\n")
    first.close()


def test_a_folder_that_cannot_be_written_is_named(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder would go")
    with pytest.raises(SaveFolderError, match=re.escape(f"resume.folder: cannot write {blocked / 'teacher'}")):
        claim(blocked / "teacher")


def test_a_model_folder_a_killed_run_left_holding_only_its_lock_is_swept_by_the_next_run_of_any_model(
        tmp_path: Path) -> None:
    saves = tmp_path / ".resume"
    abandoned = saves / "student_kd"
    abandoned.mkdir(parents=True)
    (abandoned / ".lock").write_text("pid 1 on a-host\n")  # a SIGKILLed run's: no process holds it
    resumable = saves / "student_baseline"
    (resumable / "step-00000100").mkdir(parents=True)  # a save to resume from is not a leftover
    (resumable / ".lock").write_text("pid 2 on a-host\n")
    running = claim(saves / "student_dkd")

    claim(saves / "teacher").close()

    assert not abandoned.exists()
    assert (resumable / "step-00000100").is_dir()
    assert (saves / "student_dkd" / ".lock").exists()  # a running run's folder is left alone
    running.close()

