"""The Prefect flow runs the dvc.yaml stages as tasks, shares DVC's cache, posts the evaluation as artifacts; a
stage that one `dvc status` finds up to date, with all upstream of it, starts no process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from prefect.artifacts import Artifact

from flows.distillation import distillation, parse_overrides
from pipelines.config import ParamsError, load_params
from tasks.params import write_overrides
import tasks.dvc_stages
from tasks.dvc_stages import dvc_stages, stage_plan
from tests.conftest import PROJECT_ROOT, run, SHIPPED_PARAMS


def test_flow_runs_every_dvc_stage_each_after_those_it_depends_on() -> None:
    order = dvc_stages(PROJECT_ROOT)
    assert order == ["check_params", "prepare", "augment", "train_teacher", "train_student", "teacher_logits",
                     "teacher_features@student_kd", "teacher_views@student_kd", "distill@student_kd", "evaluate",
                     "report", "publish"]
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    assert {name.partition("@")[0] for name in order} == set(stages)


@pytest.mark.integration
def test_a_student_added_to_params_yaml_becomes_a_stage_of_the_flow(project: Path) -> None:
    write_overrides(project / "params.yaml", {"distill.small_t2": {"losses": [{"method": "kd", "temperature": 2.0}]}})
    order = dvc_stages(project)
    assert order.index("teacher_logits") < order.index("distill@small_t2") < order.index("evaluate")
    assert order.index("distill@student_kd") < order.index("evaluate")


@pytest.mark.integration
def test_the_plan_runs_a_changed_stage_and_everything_downstream_of_it_and_nothing_else(
        reproduced_project: Path) -> None:
    project = reproduced_project  # after one dvc repro
    assert not any(stage_plan(project).values())

    (project / "models" / "teacher.pt").unlink()  # train_teacher changed; the stages reading the teacher not yet
    plan = stage_plan(project)
    assert [stage for stage, changed in plan.items() if changed] == [
        "train_teacher", "teacher_logits", "teacher_features@student_kd", "teacher_views@student_kd",
        "distill@student_kd", "evaluate", "report", "publish"]

    write_overrides(project / "params.yaml", {"student.train.epochs": 2})
    assert all(stage_plan(project).values()), "check_params reads every key, and every stage reads its output"


def test_an_override_inside_a_null_section_makes_it_a_section(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, path)
    assert load_params(path).teacher.distributed is None  # `distributed: null` in the teacher's section
    overrides = {"teacher.distributed.strategy": "fsdp", "teacher.distributed.nproc_per_node": 2}
    assert load_params(path, overrides).teacher.distributed.strategy == "fsdp"  # as the flow validates it
    write_overrides(path, overrides)  # as the flow writes it
    written = load_params(path).teacher.distributed
    assert (written.strategy, written.nproc_per_node) == ("fsdp", 2)
    assert "distributed: {strategy: fsdp, nproc_per_node: 2}" in path.read_text()


def test_overrides_parse_values_as_yaml() -> None:
    assert parse_overrides(["teacher.train.epochs=5", "augment.scale=[0.8, 1.2]", "device=cpu"]) == {
        "teacher.train.epochs": 5,
        "augment.scale": [0.8, 1.2],
        "device": "cpu",
    }
    with pytest.raises(ParamsError, match="key.path=value"):
        parse_overrides(["teacher.train.epochs"])


def test_written_overrides_change_only_their_own_lines_in_the_file_s_style(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, path)
    write_overrides(path, {"data.resize": [16, 16], "teacher.regularization.grad_clip": {"by": "norm", "max": 1.0}})
    before, after = (SHIPPED_PARAMS).read_text().splitlines(), path.read_text().splitlines()
    assert len(after) == len(before)
    changed = [line.split("#")[0].strip() for old, line in zip(before, after) if old != line]
    assert changed == ["resize: [16, 16]", "grad_clip: {by: norm, max: 1.0}"]
    params = load_params(path)
    assert params.data.resize == (16, 16) and params.teacher.regularization.grad_clip.max == 1.0


@pytest.mark.slow
@pytest.mark.swift
def test_flow_runs_end_to_end_records_the_override_and_leaves_dvc_nothing_to_do(
        prefect_server, project: Path, swift_server, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in swift_server.env.items():  # the worker's credentials for the object store
        monkeypatch.setenv(name, value)
    bucket = swift_server.make_bucket()
    publishing = {"publish.enabled": True, "publish.bucket": bucket, "storage.endpoint_url": swift_server.endpoint_url}
    results = distillation(overrides={"student.train.epochs": 2, **publishing}, project_dir=str(project))

    assert set(results) == {"teacher", "student_baseline", "student_kd"}
    assert results == json.loads((project / "metrics" / "eval.json").read_text())
    assert yaml.safe_load((project / "params.yaml").read_text())["student"]["train"]["epochs"] == 2
    assert "# Every knob of the pipeline" in (project / "params.yaml").read_text(), "comments kept"

    report = Artifact.get("distillation-report")
    assert report is not None and "| student_kd |" in report.data
    comparison = Artifact.get("model-comparison")
    assert comparison is not None and "student_baseline" in comparison.data
    override = Artifact.get("params-overrides")
    assert override is not None and "student.train.epochs" in override.data
    [decision] = json.loads(Artifact.get("publish-decisions").data)  # the student went to the bucket, as its row says
    assert decision["action"] == "published" and decision["uri"] == f"s3://{bucket}/students/student-kd/{decision['version']}/"
    stored = swift_server.client().list_objects_v2(Bucket=bucket, Prefix=f"students/student-kd/{decision['version']}/")
    assert {item["Key"].rsplit("/", 1)[1] for item in stored["Contents"]} == {
        "model.pt", "model_config.json", "model.pt2", "model.onnx", "card.md", "manifest.json"}

    status = run(["dvc", "repro"], project)
    assert "Running stage" not in status.stdout
    assert "Data and pipelines are up to date." in status.stdout


@pytest.mark.slow
def test_command_line_flow_after_dvc_repro_redoes_nothing_quietly_and_prints_the_report(
        reproduced_project: Path) -> None:
    project = reproduced_project  # after one dvc repro
    models = {path.name: path.stat().st_mtime_ns for path in (project / "models").glob("*.pt")}

    result = run(["python", "-m", "flows.distillation"], project)

    assert {path.name: path.stat().st_mtime_ns for path in (project / "models").glob("*.pt")} == models
    output = result.stdout + result.stderr
    assert output.count("didn't change, skipping") == len(dvc_stages(project))
    assert output.count("Finished in state Skipped(") == len(dvc_stages(project))  # each stage's task, no process
    assert "| student_kd |" in result.stdout and "Artifacts:" in result.stdout
    for noise in ("Traceback", "ERROR", "WARNING", "telemetry", "analytics"):
        assert noise not in output


@pytest.mark.slow
def test_a_rerun_with_nothing_to_do_starts_no_stage_and_leaves_dvc_lock_as_it_was(
        prefect_server, reproduced_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = reproduced_project  # after one dvc repro
    lock = (project / "dvc.lock").read_bytes()
    started: list[str] = []
    monkeypatch.setattr(tasks.dvc_stages, "run_dvc_stage", lambda stage, _: started.append(stage))

    results = distillation(project_dir=str(project))

    assert started == []
    assert (project / "dvc.lock").read_bytes() == lock
    assert results == json.loads((project / "metrics" / "eval.json").read_text())


@pytest.mark.slow
def test_a_param_changed_upstream_reruns_the_stages_downstream_of_it_through_the_flow(
        prefect_server, reproduced_project: Path) -> None:
    project = reproduced_project  # after one dvc repro
    outputs = ("models/teacher.pt", "data/teacher_logits/transfer_logits.npy", "models/student_kd.pt",
               "metrics/eval.json", "models/student_baseline.pt", "data/transfer/transfer.parquet")
    before = {name: (project / name).stat().st_mtime_ns for name in outputs}

    distillation(overrides={"teacher.train.epochs": 2}, project_dir=str(project))

    rewritten = {name for name in outputs if (project / name).stat().st_mtime_ns != before[name]}
    assert rewritten == {"models/teacher.pt", "data/teacher_logits/transfer_logits.npy", "models/student_kd.pt",
                         "metrics/eval.json"}  # the teacher and what reads it; the baseline and the data stay
    assert "Data and pipelines are up to date." in run(["dvc", "status"], project).stdout


@pytest.mark.slow
def test_invalid_override_fails_before_any_stage_and_leaves_params_untouched(prefect_server, project: Path) -> None:
    before = (project / "params.yaml").read_bytes()
    with pytest.raises(ParamsError,
                       match=r"distill\.student_kd\.losses\.0\.temperature: Input should be greater than 0"):
        distillation(overrides={"distill.student_kd.losses.0.temperature": -1.0}, project_dir=str(project))
    assert (project / "params.yaml").read_bytes() == before
    assert not (project / "data" / "prepared" / "train.parquet").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA to make train_teacher fail")
def test_a_failing_stage_fails_the_flow_with_the_stage_s_own_message(prefect_server, project: Path) -> None:
    with pytest.raises(RuntimeError, match="stage train_teacher failed") as failure:
        distillation(overrides={"device": "cuda"}, project_dir=str(project))
    assert "no CUDA device is available" in str(failure.value)
    assert (project / "data" / "transfer" / "transfer.parquet").exists(), "earlier stages still completed"


@pytest.mark.slow
def test_command_line_exits_2_on_a_bad_override(project: Path) -> None:
    result = run(["python", "-m", "flows.distillation", "--set", "teacher.optimizer.lr=-1"], project, check=False)
    assert result.returncode == 2
    assert "teacher.optimizer.lr" in result.stderr
    assert "greater than 0" in result.stderr


@pytest.mark.slow
def test_the_flow_runs_the_training_stages_on_two_processes_and_logs_every_rank(project: Path) -> None:
    write_overrides(project / "params.yaml", {"distributed.nproc_per_node": 2, "device": "cpu"})

    result = run(["python", "-m", "flows.distillation"], project)

    output = result.stdout + result.stderr
    for stage in ("train_teacher", "train_student", "distill@student_kd"):
        assert f"Task run '{stage}'" in output
    assert output.count("device cpu x 2") == 6  # each rank of each of the three training stages, in the flow's log
    assert "[rank1]:" in output
    results = json.loads((project / "metrics" / "eval.json").read_text())
    assert list(results) == ["teacher", "student_baseline", "student_kd"]
    assert "Data and pipelines are up to date." in run(["dvc", "status"], project).stdout
