"""The optimization study: every setting trained on the same data and budget, then one table and one plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from prefect.artifacts import Artifact

from flows.study import optimization_study
from pipelines.config import ParamsError, load_params
from pipelines.evaluation.study import read_curve
from tasks.params import write_overrides
from tests.conftest import run, SHIPPED_PARAMS

# Two optimizers x one schedule x two batch sizes, one epoch each: four settings in a few seconds each.
TINY_STUDY = {
    "study.grid.optimizer": {"sgd": {"name": "sgd", "lr": 0.1}, "adam": {"name": "adam", "lr": 0.01}},
    "study.grid.schedule": {"constant": {"name": "constant", "interval": "epoch"}},
    "study.grid.batch_size": ["full", 64],
    "study.extra": {},
}
SETTINGS = ["sgd-constant-batch_full", "sgd-constant-batch_64", "adam-constant-batch_full", "adam-constant-batch_64"]


def test_the_grid_is_every_optimizer_schedule_and_batch_combination_plus_the_extra_settings() -> None:
    params = load_params(SHIPPED_PARAMS)
    settings = params.study_settings()
    grid = params.study.grid
    assert len(settings) == len(grid.optimizer) * len(grid.schedule) * len(grid.batch_size) + len(params.study.extra)
    nesterov = settings["nesterov-cosine-batch_full"]
    assert nesterov.optimizer.nesterov and nesterov.schedule.name == "cosine" and nesterov.train.batch_size == "full"
    assert nesterov.model == params.student.model, "the grid keeps the base model"
    recipe = settings["recipe"]
    assert recipe.model.dropout == 0.5 and recipe.schedule.name == "sequence"
    assert recipe.regularization == params.student.regularization, "sections the setting omits stay the base's"


def test_an_extra_setting_that_breaks_a_cross_section_rule_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((SHIPPED_PARAMS).read_text())
    bad = {
        "optimizer": {"name": "adamw", "lr": 0.001},
        "regularization": {"weight_decay": 0.01, "weight_decay_mode": "coupled"},
    }
    with pytest.raises(ParamsError, match="study setting bad_adamw: .*adamw decays weights decoupled"):
        load_params(path, {"study.extra": {"bad_adamw": bad}})


@pytest.mark.slow
def test_study_flow_trains_each_setting_and_writes_table_plot_and_dvc_plots(prefect_server, project: Path) -> None:
    write_overrides(project / "params.yaml", TINY_STUDY)

    rows = optimization_study(project_dir=str(project))

    assert [row["setting"] for row in rows] == SETTINGS
    by_name = {row["setting"]: row for row in rows}
    assert by_name["sgd-constant-batch_full"]["steps"] == 1, "full batch: one optimizer step per epoch"
    assert by_name["sgd-constant-batch_64"]["steps"] > 1
    for row in rows:
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["wall_seconds"] > 0 and row["peak_rss_mb"] > 0
        curve = read_curve(project / "study" / "runs" / row["setting"], "val_accuracy")
        reached = [step + 1 for step, value in curve if value >= 0.95]
        assert row["steps_to_target"] == (reached[0] if reached else None)

    study = project / "study"
    assert json.loads((study / "results.json").read_text()) == rows
    table = (study / "results.md").read_text()
    assert all(f"| {name} |" in table for name in SETTINGS)
    assert (study / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plots = yaml.safe_load((study / "dvc.yaml").read_text())["plots"]
    for definition in plots:
        for path in next(iter(definition.values()))["y"]:
            assert (study / path).exists()
    rendered = run(["dvc", "plots", "show", "-o", str(project / "plots_html")], project)
    assert "index.html" in rendered.stdout
    assert Artifact.get("optimization-study") is not None


@pytest.mark.slow
def test_study_flow_refuses_an_unknown_setting_before_training(prefect_server, project: Path) -> None:
    with pytest.raises(ParamsError, match="unknown study setting.*valid: "):
        optimization_study(project_dir=str(project), settings=["no-such-setting"])
    assert not (project / "study").exists()
