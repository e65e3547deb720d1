"""The training progress bar (pipelines/engine/progress.py): drawn in a terminal only, by the main process only,
without reading the device in a step; outside a terminal the log is the epoch lines, as they always were.

The terminal is a real pseudo-terminal (Python's `pty`): the training runs in a process whose stderr is it."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipelines.engine.objective import CrossEntropy
from pipelines.engine.progress import NoBar, ProgressBar, progress_bar
from tests.test_host_reads import host_reads, training

WORKER = Path(__file__).with_name("progress_worker.py")  # 3 epochs of 16 steps
# A line of the stage's log (pipelines/core/stage.py's format) for an epoch's end, its time left out.
EPOCH_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (pipelines\.engine\.training_log INFO epoch \d/3 "
                        r"step \d+ train_loss \d\.\d{4} val_loss \d\.\d{4} val_accuracy (\d\.\d{4}))$")


@contextmanager
def terminal() -> Iterator[tuple[int, list[bytes]]]:
    """A pseudo-terminal of 120 columns: its end a program writes to, and what has come out of it so far (read
    by a thread, so that a writer never blocks on a full terminal)."""
    reader, writer = pty.openpty()
    fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    received: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(reader, 4096)
            except OSError:  # EIO: every writer's end is closed
                return
            if not data:
                return
            received.append(data)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        yield writer, received
    finally:
        os.close(writer)
        thread.join(timeout=30)
        os.close(reader)


def train(tmp_path: Path, stderr: int | None) -> tuple[str, str]:
    """The worker's training with its stderr `stderr` (None: a pipe): its stdout and stderr."""
    result = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "log")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=stderr or subprocess.PIPE, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode(), (result.stderr or b"").decode()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The worker's stderr in a terminal and in a pipe (its stdout must be empty either way)."""
    with terminal() as (writer, received):
        stdout, _ = train(tmp_path_factory.mktemp("terminal"), stderr=writer)
    assert stdout == ""
    stdout, piped = train(tmp_path_factory.mktemp("pipe"), stderr=None)
    assert stdout == ""
    return {"terminal": b"".join(received).decode(), "pipe": piped}


def epoch_lines(text: str) -> list[tuple[str, str]]:
    """Each epoch line of a log, as (the line without its time, the validation accuracy)."""
    return [match.groups() for line in text.splitlines() if (match := EPOCH_LINE.match(line.split("\r")[-1]))]


@pytest.mark.integration
def test_outside_a_terminal_the_log_is_the_epoch_lines_alone_and_no_bar(runs: dict[str, str]) -> None:
    lines = runs["pipe"].splitlines()
    assert len(lines) == 3 and len(epoch_lines(runs["pipe"])) == 3  # every line is an epoch's, whole
    assert [line.split(" INFO ")[1].split(" step")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "\r" not in runs["pipe"] and "img/s" not in runs["pipe"] and "|" not in runs["pipe"]


@pytest.mark.integration
def test_in_a_terminal_the_bar_shows_epochs_steps_images_per_second_and_the_last_validation_accuracy(
        runs: dict[str, str]) -> None:
    bars = [draw for draw in re.split(r"[\r\n]+", runs["terminal"]) if "%|" in draw]
    assert len(bars) >= 4  # the first step and each epoch's end at least
    first, last = bars[0], bars[-1]
    assert first.startswith("epoch 1/3 ") and "step 0/48" in first
    assert last.startswith("epoch 3/3 100%|") and "step 48/48" in last
    assert re.search(r"[\d,]+ img/s", last)
    final_accuracy = epoch_lines(runs["terminal"])[-1][1]
    assert last.rstrip().endswith(f"val_accuracy {final_accuracy}]")
    assert any("epoch 2/3" in draw for draw in bars)


@pytest.mark.integration
def test_in_a_terminal_the_epoch_lines_are_the_same_each_whole_on_its_own_line(runs: dict[str, str]) -> None:
    # written above the bar (tqdm clears its line first, then the line, then draws the bar again below it)
    assert epoch_lines(runs["terminal"]) == epoch_lines(runs["pipe"])  # the same run: the same lines


def test_only_the_main_process_draws_a_bar_and_only_on_a_terminal(tmp_path: Path) -> None:
    with terminal() as (writer, received), open(os.dup(writer), "w") as stream:
        with progress_bar(is_main=False, epochs=2, steps_per_epoch=4, stream=stream) as bar:
            assert type(bar) is NoBar
        with progress_bar(is_main=True, epochs=2, steps_per_epoch=4, stream=stream) as bar:
            assert isinstance(bar, ProgressBar)
    with open(tmp_path / "log.txt", "w") as file:
        with progress_bar(is_main=True, epochs=2, steps_per_epoch=4, stream=file) as bar:
            assert type(bar) is NoBar
    assert (tmp_path / "log.txt").read_text() == ""


def test_a_resumed_run_s_bar_starts_at_its_step_and_epoch() -> None:
    with terminal() as (writer, received), open(os.dup(writer), "w") as stream:
        with progress_bar(is_main=True, epochs=3, steps_per_epoch=10, first_step=20, stream=stream):
            pass
    assert "epoch 3/3  67%" in b"".join(received).decode() and "step 20/30" in b"".join(received).decode()


def test_the_bar_adds_no_host_read_to_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    without = host_reads(CrossEntropy(), training(batch_size=8))
    with terminal() as (writer, received), open(os.dup(writer), "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        with_bar = host_reads(CrossEntropy(), training(batch_size=8))
        monkeypatch.undo()
    assert "step 16/16" in b"".join(received).decode()  # the bar was drawn, to the end of the run
    assert with_bar == without
