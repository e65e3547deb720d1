"""The distillation methods study: every loss each way (fixed transfer set, live teacher on fresh views, function
matching) at each budget beside a labels-only control of that budget and views; a flow run over datasets and
seeds (the harder ones generated), its table of accuracy, gap recovered against each student's control and seconds
per epoch, and clear errors for bad study params."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipelines.config.data import TransformParams
from pipelines.config import ParamsError, load_params
from pipelines.config.distill import StudyDataset
from pipelines.data.generated import noisy_digits, warped_digits
from pipelines.evaluation.kd_methods import render_table
from pipelines.kd_study import check_losses, study_params, study_students, summarize_rows
from tasks.params import write_overrides
from tests.conftest import SHIPPED_PARAMS, TINY_OVERRIDES


def test_the_noisy_dataset_is_the_digits_with_seeded_noise(tmp_path: Path) -> None:
    import numpy as np

    noisy_digits(tmp_path / "a.npz", 0.3, seed=1)
    noisy_digits(tmp_path / "b.npz", 0.3, seed=1)
    noisy_digits(tmp_path / "c.npz", 0.0, seed=1)
    a, b, clean = (np.load(tmp_path / f"{name}.npz") for name in "abc")
    assert a["x"].shape == (1797, 1, 8, 8) and a["x"].dtype == np.uint8 and (a["y"] == clean["y"]).all()
    assert (a["x"] == b["x"]).all() and (a["x"] != clean["x"]).mean() > 0.5


def test_warped_digits_are_an_image_folder_whose_test_images_come_from_other_digits(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    spec = StudyDataset(size=16, images=400, clutter=2, noise=0.1)
    warped_digits(tmp_path / "a", spec, seed=3)
    warped_digits(tmp_path / "b", spec, seed=3)
    files = sorted(path.relative_to(tmp_path / "a") for path in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 400 and sum(path.parts[0] == "test" for path in files) == 60  # 15% test
    assert {path.parts[1] for path in files} == {str(digit) for digit in range(10)}
    first = np.asarray(Image.open(tmp_path / "a" / files[0]))
    assert first.shape == (16, 16) and first.dtype == np.uint8
    assert all((np.asarray(Image.open(tmp_path / "a" / path)) == np.asarray(Image.open(tmp_path / "b" / path))).all()
               for path in files)  # the seed makes the set


def test_warp_options_without_a_size_are_refused() -> None:
    with pytest.raises(ParamsError,
                       match="kd_study.datasets.hard: clutter and images apply to warped digits: set size too"):
        load_params(SHIPPED_PARAMS, {"kd_study.datasets": {"hard": {"clutter": 2}}})


def test_each_loss_runs_each_way_at_each_budget_beside_a_labels_only_control_of_that_budget_and_views() -> None:
    params = load_params(SHIPPED_PARAMS)
    students, controls = study_students(params.kd_study, params.student.train)
    ways, budgets, losses = params.kd_study.ways, params.kd_study.budgets, params.kd_study.losses
    assert len(students) == len(ways) * len(budgets) * (len(losses) + 1)
    for way, settings in ways.items():
        for budget in budgets:
            control = students[f"control-{way}-{budget}"]
            assert control["losses"] == [{"method": "ce"}] and control["train"]["epochs"] == budget
            # a way without views trains on the stored images, whatever the student section's views
            assert control["views"] == (settings.views or TransformParams()).model_dump(mode="json")
            for loss in losses:
                student = students[f"{loss}-{way}-{budget}"]
                assert controls[f"{loss}-{way}-{budget}"] == f"control-{way}-{budget}"
                assert student["train"]["epochs"] == budget and student.get("views") == control.get("views")
                assert student["teacher"] == settings.teacher
    matching = students["kd-matching-45"]["losses"]  # function matching reads no label: ce became kd at T = 1
    assert [(term["method"], term.get("temperature")) for term in matching] == [("kd", 8.0), ("kd", 1.0)]


def test_the_gap_recovered_is_measured_against_each_student_s_own_control() -> None:
    accuracies = {"teacher": 1.0, "student_baseline": 0.8, "control-fresh-15": 0.9, "kd-fresh-15": 0.95}
    rows = [{"dataset": "d", "seed": 0, "model": model, "test_accuracy": accuracy, "seconds_per_epoch": 1.0,
             "control": "control-fresh-15" if model == "kd-fresh-15" else None}
            for model, accuracy in accuracies.items()]
    summary = {row["model"]: row for row in summarize_rows(rows)}
    assert summary["kd-fresh-15"]["gap_recovered"] == pytest.approx(0.5)  # (0.95 - 0.9) / (1.0 - 0.9)
    assert summary["kd-fresh-15"]["control"] == "control-fresh-15"
    assert summary["control-fresh-15"]["gap_recovered"] is None


def test_the_gap_recovered_is_computed_per_seed_then_averaged() -> None:
    rows = [{"dataset": "d", "seed": seed, "model": model, "test_accuracy": accuracy, "seconds_per_epoch": 1.0}
            for seed, accuracies in ((0, (1.0, 0.8, 0.9)), (1, (0.9, 0.8, 0.9)))
            for model, accuracy in zip(("teacher", "student_baseline", "kd"), accuracies)]
    kd = next(row for row in summarize_rows(rows) if row["model"] == "kd")
    assert kd["gap_recovered"] == pytest.approx((0.5 + 1.0) / 2)  # half the gap on seed 0, all of it on seed 1
    assert kd["mean_accuracy"] == pytest.approx(0.9) and kd["std_accuracy"] == pytest.approx(0.0)


def test_the_grid_table_gives_each_loss_per_way_and_budget_against_its_control_and_the_seeds_it_beats_it_on() -> None:
    accuracies = {  # per seed: kd beats its control on one seed and is level with it on the other, each way
        0: {"teacher": 1.0, "student_baseline": 0.8, "control-fixed-15": 0.8, "kd-fixed-15": 0.9,
            "control-fresh-45": 0.9, "kd-fresh-45": 0.9},
        1: {"teacher": 1.0, "student_baseline": 0.8, "control-fixed-15": 0.8, "kd-fixed-15": 0.8,
            "control-fresh-45": 0.8, "kd-fresh-45": 0.9},
    }
    rows = [{"dataset": "d", "seed": seed, "model": model, "test_accuracy": accuracy, "seconds_per_epoch": 1.0,
             "control": model.replace("kd", "control") if model.startswith("kd") else None}
            for seed, models in accuracies.items() for model, accuracy in models.items()]
    summary = summarize_rows(rows)
    kd = next(row for row in summary if row["model"] == "kd-fixed-15")
    assert (kd["above"], kd["level"], kd["below"]) == (1, 1, 0)
    table = render_table(summary, [0, 1])
    assert "| loss | fixed-15 | fresh-45 |\n" in table  # budget by budget
    assert "| kd | +5.00 (+25%, 1/2) | +5.00 (+25%, 1/2) |\n" in table  # points, gap recovered, seeds above
    assert "| kd-fixed-15 | 85.00% ± 7.07% | control-fixed-15 | +5.00 | +25% | 1 / 1 / 0 | 1.00 |" in table


def test_a_bad_study_loss_is_named_by_its_kd_study_key(tmp_path: Path) -> None:
    params_file = tmp_path / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, params_file)
    write_overrides(params_file, {"kd_study.losses.kd.0.temperature": -1.0})
    with pytest.raises(ParamsError, match=r"kd_study\.losses\.kd\.0\.temperature: Input should be greater than 0"):
        check_losses(study_params(params_file, "digits", 0, "digits"))


def test_a_whole_study_student_is_named_by_its_losses_key(tmp_path: Path) -> None:
    params_file = tmp_path / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, params_file)
    write_overrides(params_file, {"kd_study.losses.kd_wide": {
        "losses": [{"method": "kd", "temperature": -1.0}], "model": {"width": 16, "depth": 2, "dropout": 0.0}}})
    params = study_params(params_file, "digits", 0, "digits")
    assert params.student_training("kd_wide-fixed-45").model.width == 16
    assert params.student_training("kd_wide-fixed-15").train.epochs == 15
    with pytest.raises(ParamsError,
                       match=r"kd_study\.losses\.kd_wide\.losses\.0\.temperature: Input should be greater than 0"):
        check_losses(params)


def test_a_study_dataset_or_loss_name_must_be_a_name() -> None:
    with pytest.raises(ParamsError, match="kd_study.datasets.my data"):
        load_params(SHIPPED_PARAMS, {"kd_study.datasets": {"my data": {"noise": 0.1}}})


def test_a_run_trains_only_the_models_whose_settings_are_new_or_changed(tmp_path: Path) -> None:
    from pipelines.kd_study import run

    params_file = tmp_path / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, params_file)
    write_overrides(params_file, TINY_OVERRIDES | {"kd_study.budgets": [1], "kd_study.ways": {"fixed": {}},
                                                   "kd_study.losses": {"kd": [{"method": "kd"}, {"method": "ce"}]}})
    models = tmp_path / "kd_study" / "runs" / "digits-0" / "models"

    def trained() -> dict[str, int]:  # each model file's modification time: rewritten when it is trained anew
        return {path.stem: path.stat().st_mtime_ns for path in models.glob("*.pt") if ".heads" not in path.name}

    first_rows = run(params_file, tmp_path, "digits", 0)
    first = trained()
    assert set(first) == {"teacher", "student_baseline", "control-fixed-1", "kd-fixed-1"}

    # a loss added to the grid, and kd's temperature changed: only those two students train
    write_overrides(params_file, {"kd_study.losses": {"kd": [{"method": "kd", "temperature": 2.0}, {"method": "ce"}],
                                                      "dist": [{"method": "dist"}, {"method": "ce"}]}})
    rows = run(params_file, tmp_path, "digits", 0)
    second = trained()
    assert {name for name in second if second[name] != first.get(name)} == {"kd-fixed-1", "dist-fixed-1"}
    kept = {row["model"]: row for row in first_rows if row["model"] != "kd-fixed-1"}
    assert [row for row in rows if row["model"] in kept] == list(kept.values())  # the same rows, read again

    # the teacher's settings changed: everything trains again, on the regenerated data
    write_overrides(params_file, {"teacher.optimizer.lr": 0.01})
    run(params_file, tmp_path, "digits", 0)
    assert all(stamp != second[name] for name, stamp in trained().items())


@pytest.mark.slow
def test_the_study_flow_runs_each_dataset_and_seed_two_at_a_time_and_tabulates_every_loss(prefect_server,
                                                                                            project: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    from flows.kd_methods import kd_methods_study

    write_overrides(project / "params.yaml", {  # the project's params are the tiny ones already
        "kd_study.seeds": [0, 1],
        "kd_study.datasets": {"digits": {}, "warped": {"size": 12, "images": 300, "clutter": 1, "noise": 0.1}},
        "kd_study.budgets": [1], "kd_study.ways": {"fixed": {}},
        "kd_study.losses": {"kd": [{"method": "kd"}, {"method": "ce"}],
                            "fitnet": [{"method": "fitnet"}, {"method": "ce"}]},
    })

    state = kd_methods_study(project_dir=str(project), jobs=2, return_state=True)

    table = state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[
            state.state_details.flow_run_id])), task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="kd study")))
    spans = sorted((run.start_time, run.end_time) for run in runs)
    assert len(spans) == 4
    assert max(sum(start <= moment < end for start, end in spans) for moment, _ in spans) == 2  # two at a time

    summary = json.loads((project / "kd_study" / "results.json").read_text())
    assert [(row["dataset"], row["model"]) for row in summary] == [
        (dataset, model) for dataset in ("digits", "warped")
        for model in ("teacher", "student_baseline", "control-fixed-1", "kd-fixed-1", "fitnet-fixed-1")]
    assert all(row["seeds"] == 2 and row["seconds_per_epoch"] > 0 for row in summary)
    assert "### warped" in table and "| fitnet-fixed-1 |" in table and "| control-fixed-1 |" in table
    assert (project / "kd_study" / "gains.png").stat().st_size > 0
