"""Resumable training (pipelines/engine/resume/): a stage killed mid-epoch, or a torchrun worker of an FSDP
run killed and restarted, continues from its last saved training state (the EMA of the weights and early
stopping's best ones included) and ends with the weights and the training log of a run that was never
interrupted; a stage that lost a worker resumes on fewer processes, and a pipeline's save on another split of
its layers or another strategy; saves of other params are not resumed; a damaged save is named."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint import state_dict_saver

from pipelines.augment import augment
from pipelines.config import ParamsError, load_params
from pipelines.config.resume import ResumeParams
from pipelines.config.schedules import ConstantSchedule
from pipelines.core.paths import Paths
from pipelines.engine.checkpoint import load_checkpoint
from pipelines.engine.early_stopping import NoEarlyStopping
from pipelines.engine.ema import NoAverage
from pipelines.engine.resume import Progress, Resume, TrainingState
from pipelines.engine.runtime import Runtime
from pipelines.engine.schedules import build_schedule
from pipelines.engine.training import run_fingerprint
from pipelines.prepare import prepare
from tasks.params import write_overrides
from tests.conftest import PROJECT_ROOT, SHIPPED_PARAMS, TINY_OVERRIDES, local_rank_1, run

# 20 optimizer steps per epoch on the tiny transfer set; `every_minutes: 0` saves at every reading of the clock,
# every 10 steps: steps 10, 30, 50... fall mid-epoch. Dropout: the RNG state must come back too; the EMA's weights
# and early stopping's best ones (it never stops here, and puts the best epoch's weights back at the end) are
# part of the state.
RESUMABLE = {**TINY_OVERRIDES, "device": "cpu", "teacher.train.epochs": 30, "resume.every_minutes": 0,
             "teacher.model.dropout": 0.2, "teacher.regularization.ema_decay": 0.9,
             "teacher.regularization.early_stopping": {"metric": "val_loss", "patience": 30}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Paths:
    paths, params = Paths(tmp_path_factory.mktemp("prepared")), load_params(SHIPPED_PARAMS, TINY_OVERRIDES)
    prepare(params, paths)
    augment(params, paths)
    return paths


def project(prepared: Paths, root: Path, **overrides) -> tuple[Paths, list[str]]:
    """A copy of the prepared project with its own params file; the teacher stage's command line."""
    shutil.copytree(prepared.root, root)
    params_file = root / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, params_file)
    write_overrides(params_file, {**RESUMABLE, **overrides})
    return Paths(root), [sys.executable, "-m", "pipelines.train_teacher", "--params", str(params_file),
                         "--root", str(root)]


def saves(paths: Paths) -> list[Path]:
    """The complete saves (not the one being written when the run was killed)."""
    return sorted(path for path in paths.resume_states(".resume", "teacher").glob("step-*")
                  if not path.name.endswith(".partial"))


def kill_after_save(command: list[str], paths: Paths, step: int, victim=lambda stage: stage.pid,
                    sent: signal.Signals = signal.SIGKILL, model: str = "teacher") -> subprocess.Popen:
    """Start `command`, send `sent` to the process `victim` picks once the training state of `model` at `step`
    is saved (a save is complete, written in the background, once the next one starts: the run is past it)."""
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    stage = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = paths.resume_states(".resume", model) / f"step-{step:08d}"
    deadline = time.monotonic() + 120
    while not target.exists() and stage.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert target.exists(), "the run saved its training state"
    os.kill(victim(stage), sent)
    return stage


def rank_1(stage: subprocess.Popen) -> int:
    """The worker of local rank 1 of a stage running under torchrun."""
    return local_rank_1(["-P", str(stage.pid)])


def weights(paths: Paths) -> dict[str, torch.Tensor]:
    return load_checkpoint(paths.model("teacher")).state_dict


def max_difference(one: dict, other: dict) -> float:
    assert one.keys() == other.keys()
    return max((one[key].float() - other[key].float()).abs().max().item() for key in one)


def logged(paths: Paths, metric: str) -> list[tuple[str, str]]:
    """(step, value) rows of one dvclive metric of the teacher's training log, without the timestamps."""
    rows = (paths.training_log("teacher") / "plots" / "metrics" / f"{metric}.tsv").read_text().splitlines()
    return [tuple(row.split("\t")[-2:]) for row in rows[1:]]  # (the lr log has no timestamps)


@pytest.fixture(scope="module")
def uninterrupted(prepared: Paths, tmp_path_factory: pytest.TempPathFactory) -> Paths:
    """The teacher stage of RESUMABLE run from start to end."""
    reference, command = project(prepared, tmp_path_factory.mktemp("uninterrupted") / "reference")
    run(command, PROJECT_ROOT)
    return reference


@pytest.mark.slow
@pytest.mark.parametrize("sent", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_stage_killed_mid_epoch_resumes_to_the_weights_and_log_of_an_uninterrupted_run(
    prepared: Paths, uninterrupted: Paths, tmp_path: Path, sent: signal.Signals
) -> None:
    reference = uninterrupted
    assert saves(reference) == [] and not (reference.root / ".resume").exists(), "a finished stage removes its saves"

    killed, command = project(prepared, tmp_path / "killed")
    stage = kill_after_save(command, killed, step=30, sent=sent)  # in epoch 2 of 30
    stage.wait()
    assert not killed.model("teacher").exists()
    assert saves(killed), "the killed run's saves are there to resume from"

    result = run(command, PROJECT_ROOT)

    assert "resuming from" in result.stderr
    assert max_difference(weights(killed), weights(reference)) <= 1e-6
    for metric in ("lr", "train_loss", "val_accuracy"):  # the log continues: every step once, the same values
        assert logged(killed, metric) == logged(reference, metric)
    assert load_checkpoint(killed.model("teacher")).metrics["epochs"] == 30
    assert saves(killed) == []
    assert [path.name for path in killed.root.rglob(".*tmp-*")] == []


@pytest.mark.slow
def test_a_killed_torchrun_worker_is_restarted_and_resumes_to_the_weights_of_an_uninterrupted_run(
    prepared: Paths, tmp_path: Path
) -> None:
    # Sharded: each rank saves and loads its own shards. 4 epochs: the restart at step 30 is in the second.
    two_processes = {"distributed.nproc_per_node": 2, "distributed.strategy": "fsdp", "distributed.max_restarts": 1,
                     "distributed.timeout_s": 60, "teacher.train.epochs": 4}
    reference, command = project(prepared, tmp_path / "reference", **two_processes)
    run(command, PROJECT_ROOT)

    restarted, command = project(prepared, tmp_path / "restarted", **two_processes)

    stage = kill_after_save(command, restarted, step=30, victim=rank_1)
    stage.wait(timeout=300)

    assert stage.returncode == 0, "torchrun restarted the workers, which finished the run"
    assert max_difference(weights(restarted), weights(reference)) <= 1e-6
    assert logged(restarted, "lr") == logged(reference, "lr")


@pytest.mark.slow
def test_a_stage_that_lost_a_worker_resumes_on_fewer_processes(prepared: Paths, tmp_path: Path) -> None:
    # Two FSDP processes, one of them killed in epoch 2 of 2 (no restarts: the stage fails); rerun on one.
    paths, command = project(prepared, tmp_path / "root", **{"teacher.train.epochs": 2, "distributed.strategy": "fsdp",
                                                             "distributed.nproc_per_node": 2})
    kill_after_save(command, paths, step=20, victim=rank_1).wait(timeout=120)
    assert not paths.model("teacher").exists()

    write_overrides(paths.root / "params.yaml", {"distributed.nproc_per_node": 1})
    result = run(command, PROJECT_ROOT)

    assert "resuming from" in result.stderr and "the save was made by 2 processes, this run has 1" in result.stderr
    checkpoint = load_checkpoint(paths.model("teacher"))
    assert (checkpoint.metrics["epochs"], checkpoint.metrics["steps"]) == (2, 40)
    assert [int(step) for step, _ in logged(paths, "lr")] == list(range(40))  # the log continued, each step once
    assert saves(paths) == []


@pytest.mark.parametrize(("processes", "changes", "examples", "resumes"), [
    (3, {"strategy": "pipeline", "pipeline_schedule": "1f1b"}, 320, True),  # the layers split anew
    (2, {"strategy": "fsdp", "grad_accum_steps": 4}, 320, True),  # each step in the same 4 micro-batches
    (1, {"grad_accum_steps": 4}, 320, True),
    (1, {"strategy": "pipeline"}, 328, True),  # one stage: the last, incomplete batch left out too
    (2, {"strategy": "pipeline", "microbatches": 2}, 320, False),  # other micro-batches
    (1, {"grad_accum_steps": 4}, 328, False),  # one more step per epoch (a pipeline leaves it out)
    (3, {"strategy": "pipeline", "lr_scaling": "linear"}, 320, True),  # (a pipeline's rate is not scaled)
])
def test_a_pipeline_s_save_resumes_wherever_each_step_is_split_into_the_same_micro_batches(
    prepared: Paths, processes: int, changes: dict, examples: int, resumes: bool
) -> None:
    def fingerprint(processes: int, examples: int, **distributed) -> str:
        overrides = {**TINY_OVERRIDES, "teacher.train.batch_size": 16,
                     **{f"distributed.{key}": value for key, value in distributed.items()}}
        params = load_params(SHIPPED_PARAMS, overrides)
        return run_fingerprint("teacher", params.teacher, params, prepared,
                               Runtime(torch.device("cpu"), rank=0, world_size=processes), examples)

    saved = fingerprint(2, 320, strategy="pipeline", microbatches=4, lr_scaling=changes.get("lr_scaling", "none"))
    assert (fingerprint(processes, examples, **{"microbatches": 4, **changes}) == saved) is resumes


def test_a_model_s_own_distributed_changes_resume_as_the_section_s_do(prepared: Paths) -> None:
    def fingerprint(processes: int, **overrides) -> str:
        params = load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, "teacher.train.batch_size": 16, **overrides})
        return run_fingerprint("teacher", params.teacher, params, prepared,
                               Runtime(torch.device("cpu"), rank=0, world_size=processes), 320)

    saved = fingerprint(2, **{"distributed.nproc_per_node": 2, "distributed.strategy": "fsdp"})
    assert fingerprint(1, **{"teacher.distributed": {"nproc_per_node": 1, "strategy": "ddp"}}) == saved
    assert fingerprint(2, **{"teacher.distributed": {"nproc_per_node": 2, "grad_accum_steps": 2}}) != saved


def test_a_save_made_with_bf16_is_not_resumed_without_it(prepared: Paths) -> None:
    params = load_params(SHIPPED_PARAMS, TINY_OVERRIDES)
    runtimes = [Runtime(torch.device("cuda"), speed=params.speed.model_copy(update={"bf16": bf16}))
                for bf16 in (True, False)]
    bf16, fp32 = (run_fingerprint("teacher", params.teacher, params, prepared, runtime, 320) for runtime in runtimes)
    assert bf16 != fp32


@pytest.mark.integration
def test_saved_states_of_other_params_are_not_resumed(prepared: Paths, tmp_path: Path) -> None:
    paths, command = project(prepared, tmp_path / "root", **{"teacher.train.epochs": 2})
    stage = kill_after_save(command, paths, step=20)
    stage.wait()

    write_overrides(paths.root / "params.yaml", {"teacher.optimizer.lr": 0.01})
    result = run(command, PROJECT_ROOT)

    assert "of other params or data: starting over" in result.stderr and "resuming from" not in result.stderr
    assert load_checkpoint(paths.model("teacher")).metrics["steps"] == 40


@pytest.mark.integration
@pytest.mark.parametrize("damaged, kept, message", [
    ("*.distcp", 20, "{newest}: a saved training state that cannot be read"),
    ("rank-0.pt", 0, "{newest}: a saved training state that cannot be read (EOFError)"),
    ("state.json", 20, "{newest}/state.json: the record of a saved training state cannot be read"),
])
def test_a_damaged_save_is_named_with_what_to_do_and_the_saves_before_it_are_kept(
    prepared: Paths, tmp_path: Path, damaged: str, kept: int, message: str
) -> None:
    paths, command = project(prepared, tmp_path / "root", **{"teacher.train.epochs": 2})
    kill_after_save(command, paths, step=20).wait()
    left = saves(paths)
    newest = left[-1]
    for file in newest.glob(damaged):  # cut short, to its first `kept` bytes
        file.write_bytes(file.read_bytes()[:kept])

    result = run(command, PROJECT_ROOT, check=False)

    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert message.format(newest=newest) in result.stderr
    assert "to resume from the save before it, or set resume.mode: never" in result.stderr
    assert saves(paths) == left and len(left) > 1


def test_a_save_holds_the_state_of_its_step_though_training_changes_it_in_place_while_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def trained() -> tuple[nn.Module, TrainingState]:
        torch.manual_seed(0)
        model = nn.Linear(64, 8)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.ones(2, 64)).sum().backward()
        optimizer.step()  # a momentum buffer to save too
        schedule = build_schedule(optimizer, ConstantSchedule(name="constant"), epochs=1, steps_per_epoch=10)
        return model, TrainingState(model, optimizer, schedule, NoAverage(), NoEarlyStopping())

    next_step_taken, written = threading.Event(), []
    write = state_dict_saver.save  # what DCP's writing thread runs: held there until the next step is taken

    def held_write(*args, **kwargs):
        assert next_step_taken.wait(timeout=60)
        written.append(write(*args, **kwargs))

    monkeypatch.setattr(state_dict_saver, "save", held_write)
    model, state = trained()
    saving = Resume(tmp_path / "teacher", ResumeParams(), Runtime(torch.device("cpu")), "run")
    progress, _ = saving.start(state, Progress.first(0), loss_rank=0)
    progress.batch = progress.step = 3
    expected = {key: value.clone() for key, value in model.state_dict().items()}
    saving.save(state, progress, {}, history={"lr": [0.1] * 3, "epochs": []})
    with torch.no_grad():  # the next step, while the save is written
        for parameter in model.parameters():
            parameter.mul_(-2.0)
    progress.batch = progress.step = 4
    next_step_taken.set()
    assert not (tmp_path / "teacher" / "step-00000003").exists(), "complete only once written"
    saving.finish()
    assert len(written) == 1
    saving.release()

    fresh, state = trained()
    resumed = Resume(tmp_path / "teacher", ResumeParams(), Runtime(torch.device("cpu")), "run")
    progress, _ = resumed.start(state, Progress.first(0), loss_rank=0)
    assert resumed.resumed == tmp_path / "teacher" / "step-00000003" and progress.step == 3
    assert all(torch.equal(fresh.state_dict()[key], value) for key, value in expected.items())
    assert resumed.history == {"lr": [0.1] * 3, "epochs": []}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("mode", "off", "resume.mode: Input should be 'auto' or 'never'"),
    ("every_minutes", -1, "resume.every_minutes: Input should be greater than or equal to 0"),
    ("interval_steps", 100, "resume: unknown key(s) interval_steps; allowed keys here: mode, every_minutes, "
                            "keep_latest, folder"),  # saves are by time now
    ("keep_latest", 0, "resume.keep_latest: Input should be greater than or equal to 1"),
])
def test_a_bad_resume_param_is_named(key: str, value, message: str) -> None:
    with pytest.raises(ParamsError) as caught:
        load_params(SHIPPED_PARAMS, {f"resume.{key}": value})
    assert message in str(caught.value)


@pytest.mark.integration
def test_resume_never_starts_over_and_saves_nothing(prepared: Paths, tmp_path: Path) -> None:
    paths, command = project(prepared, tmp_path / "root", **{"teacher.train.epochs": 2})
    kill_after_save(command, paths, step=20).wait()
    left = saves(paths)

    write_overrides(paths.root / "params.yaml", {"resume.mode": "never"})
    result = run(command, PROJECT_ROOT)

    assert "resuming from" not in result.stderr
    assert load_checkpoint(paths.model("teacher")).metrics["steps"] == 40
    assert saves(paths) == left, "what the killed run saved is left as it was"
