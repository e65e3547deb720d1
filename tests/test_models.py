"""Model factory: a plain CNN and a small ResNet, shaped by the dataset card, rebuilt from their checkpoints."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from pipelines.engine.checkpoint import load_model, save_checkpoint
from pipelines.config import ParamsError, load_params
from pipelines.config.training import ModelParams
from pipelines.data.card import DatasetCard
from pipelines.engine.training import model_config
from pipelines.models import build_model, count_parameters
from pipelines.core.paths import Paths
from pipelines.augment import augment
from pipelines.distill import distill
from pipelines.evaluate import evaluate
from pipelines.prepare import prepare
from pipelines.teacher_logits import teacher_logits
from pipelines.train_student import train_student
from pipelines.train_teacher import train_teacher
from tests.conftest import SHIPPED_PARAMS, TINY_OVERRIDES

WITHOUT_TIMM = "timm is an optional extra: `make test-timm` runs these tests in a venv that has it"


def card(image_shape: tuple[int, int, int], num_classes: int, mean: list[float], std: list[float]) -> DatasetCard:
    """The card of a prepared dataset, as far as the models read it."""
    return DatasetCard("test", [str(index) for index in range(num_classes)], image_shape, num_classes, mean, std, {})


GRAY_8 = card((1, 8, 8), 10, [0.3], [0.4])
RGB_32 = card((3, 32, 32), 100, [0.5, 0.4, 0.3], [0.2] * 3)


def resnet(width: int = 4, depth: int = 3, blocks: int = 2) -> ModelParams:
    return ModelParams(arch="resnet", width=width, depth=depth, dropout=0.0, blocks_per_stage=blocks)


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
@pytest.mark.parametrize("card", [GRAY_8, RGB_32], ids=["gray-8x8", "rgb-32x32"])
def test_each_architecture_adapts_to_the_card_s_channels_size_and_classes(arch: str, card: DatasetCard) -> None:
    model = build_model(model_config(ModelParams(arch=arch, width=4, depth=3, dropout=0.1), card))
    channels, height, width = card.image_shape
    assert model(torch.rand(5, channels, height, width)).shape == (5, card.num_classes)


@pytest.mark.parametrize(("card", "expected_size"), [(GRAY_8, 2), (RGB_32, 8)], ids=["gray-8x8", "rgb-32x32"])
def test_resnet_stages_double_the_channels_and_halve_the_resolution(card: DatasetCard, expected_size: int) -> None:
    model = build_model(model_config(resnet(width=4, depth=3), card))
    channels, height, width = card.image_shape
    features = model.features(torch.rand(2, channels, height, width))
    assert features.shape == (2, 4 * 2**2, expected_size, expected_size)


def test_resnet_projects_the_shortcut_only_where_a_stage_changes_shape() -> None:
    model = build_model(model_config(resnet(width=4, depth=3, blocks=2), GRAY_8))
    projections = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(projections) == 2, "one 1x1 projection at the start of stages 2 and 3"


def test_resnet_grows_with_width_depth_and_blocks_per_stage() -> None:
    def size(params: ModelParams) -> int:
        return count_parameters(build_model(model_config(params, GRAY_8)))

    base = size(resnet(width=4, depth=2, blocks=1))
    assert size(resnet(width=8, depth=2, blocks=1)) > base
    assert size(resnet(width=4, depth=3, blocks=1)) > base
    assert size(resnet(width=4, depth=2, blocks=2)) > base


def test_a_resnet_checkpoint_rebuilds_the_same_model(tmp_path: Path) -> None:
    config = model_config(resnet(), RGB_32)
    model = build_model(config).eval()
    save_checkpoint(tmp_path / "model.pt", model.state_dict(), config, {"val_accuracy": 0.5})
    loaded, checkpoint = load_model(tmp_path / "model.pt")
    images = torch.rand(3, 3, 32, 32)
    assert checkpoint.model_config.arch == "resnet"
    assert torch.equal(loaded(images), model(images))


def test_a_checkpoint_written_before_the_typed_config_loads_unchanged(tmp_path: Path) -> None:
    # What the code before ModelConfig wrote: the model config as a plain dict of lists and numbers.
    config = model_config(resnet(), RGB_32)
    model = build_model(config).eval()
    plain = {"arch": "resnet", "width": 4, "depth": 3, "blocks_per_stage": 2, "dropout": 0.0, "in_channels": 3,
             "image_size": [32, 32], "num_classes": 100, "pixel_mean": [0.5, 0.4, 0.3], "pixel_std": [0.2] * 3}
    assert config.to_dict() == plain  # the file's layout is unchanged
    torch.save({"state_dict": model.state_dict(), "model_config": plain, "metrics": {"val_accuracy": 0.5}},
               tmp_path / "old.pt")
    loaded, checkpoint = load_model(tmp_path / "old.pt")
    assert checkpoint.model_config == config and checkpoint.metrics == {"val_accuracy": 0.5}
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(images), model(images))


def test_an_unknown_arch_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ParamsError,
                       match=r"teacher\.model\.arch: .*unknown arch 'vit'; valid: cnn, resnet, timm:<model-name>"):
        load_params(SHIPPED_PARAMS, {"teacher.model.arch": "vit"})


def test_the_teacher_stage_trains_a_resnet_teacher(trained_pipeline, tmp_path: Path) -> None:
    _, source = trained_pipeline
    paths = Paths(tmp_path)
    shutil.copytree(source.prepared, paths.prepared)
    shutil.copytree(source.transfer.parent, paths.transfer.parent)
    overrides = {**TINY_OVERRIDES, "teacher.model.arch": "resnet", "teacher.model.blocks_per_stage": 1}
    params = load_params(SHIPPED_PARAMS, overrides)

    metrics = train_teacher(params, paths)

    model, checkpoint = load_model(paths.model("teacher"))
    assert checkpoint.model_config.arch == "resnet"
    assert any(type(module).__name__ == "BasicBlock" for module in model.modules())
    assert 0.0 <= metrics["val_accuracy"] <= 1.0


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed here")
def test_a_timm_arch_without_timm_installed_is_refused_with_how_to_install_it() -> None:
    with pytest.raises(ParamsError,
                       match=r"student\.model\.arch: .*timm:resnet18 needs timm, which is not installed: pip install"):
        load_params(SHIPPED_PARAMS, {"student.model.arch": "timm:resnet18"})


@pytest.mark.parametrize("card", [GRAY_8, RGB_32], ids=["gray-8x8", "rgb-32x32"])
def test_timm_models_are_built_for_the_card_s_channels_and_classes(card: DatasetCard) -> None:
    pytest.importorskip("timm", reason=WITHOUT_TIMM)
    params = ModelParams(arch="timm:resnet18", width=1, depth=1, dropout=0.0)
    model = build_model(model_config(params, card))
    channels, height, width = card.image_shape
    logits = model(torch.rand(2, channels, height, width))
    assert logits.shape == (2, card.num_classes)


def test_an_unknown_timm_model_is_refused() -> None:
    pytest.importorskip("timm", reason=WITHOUT_TIMM)
    with pytest.raises(ParamsError, match=r"timm has no model 'no_such_net'"):
        load_params(SHIPPED_PARAMS, {"student.model.arch": "timm:no_such_net"})


def test_a_timm_teacher_and_a_timm_student_run_through_the_one_epoch_pipeline(tmp_path: Path) -> None:
    pytest.importorskip("timm", reason=WITHOUT_TIMM)
    overrides = {**TINY_OVERRIDES, "teacher.model.arch": "timm:resnet18",
                 "student.model.arch": "timm:mobilenetv3_small_050"}
    params = load_params(SHIPPED_PARAMS, overrides)
    paths = Paths(tmp_path)
    for stage in (prepare, augment, train_teacher, train_student, teacher_logits, distill):
        stage(params, paths)
    results = evaluate(params, paths)
    teacher, checkpoint = load_model(paths.model("teacher"))
    assert type(teacher).__name__ == "TimmModel" and checkpoint.model_config.arch == "timm:resnet18"
    assert results["teacher"]["params"] > 10 * results["student_kd"]["params"]
