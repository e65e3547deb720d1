"""The optimization study: every setting trained on the same data and budget, then one table and one plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from prefect.artifacts import Artifact

from flows.study import optimization_study
from pipelines.config import ParamsError, load_params
from pipelines.core.paths import Paths
from pipelines.data.images import ImageSet
from pipelines.evaluation.study import read_curve
from pipelines.study import drawn_images, run_setting
from tasks.params import write_overrides
from tests.conftest import run, SHIPPED_PARAMS, TINY_OVERRIDES

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


def test_every_grid_setting_trains_the_study_s_epochs_whatever_the_model_section_s() -> None:
    params = load_params(SHIPPED_PARAMS, {"student.train.epochs": 60, "study.epochs": 15})
    settings = params.study_settings()
    assert {settings[name].train.epochs for name in settings if name.count("-") == 2} == {15}
    assert settings["full_batch_20x_epochs"].train.epochs == 300, "a setting's own train section stays"
    unset = load_params(SHIPPED_PARAMS, {"student.train.epochs": 60, "study.epochs": None}).study_settings()
    assert unset["adam-cosine-batch_128"].train.epochs == 60


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


def test_the_deep_network_settings_train_a_fifty_layer_plain_mlp_on_a_thousand_images() -> None:
    params = load_params(SHIPPED_PARAMS)
    settings = params.study_settings()
    deep = {name: setting for name, setting in settings.items() if setting.model.arch == "mlp"}
    assert {"deep_gd", "deep_adam"} <= set(deep)
    for name, setting in deep.items():
        assert setting.model.depth == 50 and params.study.train_images(name) == 1000
    gd, adam = settings["deep_gd"], settings["deep_adam"]
    assert gd.train.batch_size == "full" and gd.optimizer.name == "sgd" and gd.train.epochs == 5000
    assert adam.optimizer.name == "adam" and adam.train.epochs * 1000 // adam.train.batch_size == 5000, \
        "mini-batch Adam takes as many optimizer steps as batch gradient descent"
    assert params.study.train_images("adam-cosine-batch_128") is None, "the grid trains on every image"


def test_a_setting_s_train_images_are_that_many_of_the_transfer_set_drawn_with_the_seed() -> None:
    images = ImageSet(torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1), torch.arange(50) % 10,
                      [str(label) for label in range(10)], {"copy": torch.arange(50) // 10})

    drawn = drawn_images(images, 20, seed=0, key="study.extra.small.train_images")

    rows = drawn.images.flatten().long()
    assert len(drawn) == 20 and len(set(rows.tolist())) == 20
    assert rows.tolist() == sorted(rows.tolist()), "in the transfer set's order"
    assert torch.equal(drawn.labels, rows % 10) and torch.equal(drawn.columns["copy"], rows // 10)
    again = drawn_images(images, 20, seed=0, key="study.extra.small.train_images")
    assert torch.equal(again.images, drawn.images), "the same seed draws the same images"
    assert not torch.equal(drawn_images(images, 20, seed=1, key="k").images, drawn.images)
    assert drawn_images(images, None, seed=0, key="k") is images


def test_more_train_images_than_the_transfer_set_holds_is_refused_naming_the_key() -> None:
    images = ImageSet(torch.zeros(50, 1, 1, 1, dtype=torch.uint8), torch.zeros(50, dtype=torch.long), ["0"])
    with pytest.raises(ParamsError, match=r"study\.extra\.big\.train_images: 60 images, but the transfer set has "
                                          r"only 50; give at most 50, or null for all of them"):
        drawn_images(images, 60, seed=0, key="study.extra.big.train_images")


def test_a_deep_mlp_setting_trains_on_its_train_images_in_full_batches(trained_pipeline, tmp_path: Path) -> None:
    _, source = trained_pipeline
    paths = Paths(tmp_path)
    shutil.copytree(source.prepared, paths.prepared)
    shutil.copytree(source.transfer.parent, paths.transfer.parent)
    setting = {"model": {"arch": "mlp", "width": 16, "depth": 8, "dropout": 0.0, "init": "kaiming", "norm": "batch"},
               "train": {"epochs": 3, "batch_size": "full"}, "optimizer": {"name": "sgd", "lr": 0.01},
               "schedule": {"name": "constant", "interval": "epoch"}, "train_images": 100}
    params = load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, "study.extra": {"small_deep": setting}})

    row = run_setting(params, paths, "small_deep")

    assert (row["train_images"], row["batch_size"], row["epochs"], row["steps"]) == (100, "full", 3, 3)
    assert json.loads(paths.study_result("small_deep").read_text()) == row
    losses = read_curve(paths.study_run("small_deep"), "train_loss")
    assert [step for step, _ in losses] == [0, 1, 2], "one full-batch step an epoch"
    # The loss target sits between the first epoch's loss and the last's: the step that first went below it.
    first, last = losses[0][1], losses[-1][1]
    assert last < first, "gradient descent on 100 images lowers their loss in three steps"
    target = (first + last) / 2
    params = load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, "study.extra": {"small_deep": setting},
                                          "study.target_train_loss": target})
    expected = next(step + 1 for step, loss in losses if loss < target)
    assert run_setting(params, paths, "small_deep")["steps_to_loss_target"] == expected
