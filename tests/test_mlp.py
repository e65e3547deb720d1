"""The plain deep mlp of the optimization study: its starts and normalizations, its params errors, and its
checkpoint rebuilt through the engine's model_config."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
import torch
from torch import nn

from pipelines.config import ParamsError, load_params
from pipelines.config.training import Initialization, ModelParams, Normalization
from pipelines.data.card import DatasetCard
from pipelines.engine.checkpoint import load_model, save_checkpoint
from pipelines.engine.training import model_config
from pipelines.models import build_model
from pipelines.models.mlp import INITIALIZERS, NORMALIZATIONS
from tests.conftest import SHIPPED_PARAMS

GRAY_8 = DatasetCard("test", [str(label) for label in range(10)], (1, 8, 8), 10, [0.3], [0.4], {})
NORM_LAYERS = {"none": None, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


def mlp(depth: int = 3, init: str = "default", norm: str = "none", width: int = 16) -> ModelParams:
    return ModelParams(arch="mlp", width=width, depth=depth, dropout=0.0, init=init, norm=norm)


def last_hidden_layer(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    return model.features(model.normalize(pixels))


def test_the_tables_of_the_model_are_the_choices_of_the_params() -> None:
    assert list(INITIALIZERS) == list(get_args(Initialization))
    assert list(NORMALIZATIONS) == list(get_args(Normalization))


@pytest.mark.parametrize("norm", list(NORMALIZATIONS))
@pytest.mark.parametrize("init", list(INITIALIZERS))
def test_the_mlp_has_depth_hidden_layers_started_and_normalized_as_asked(init: str, norm: str) -> None:
    torch.manual_seed(0)
    model = build_model(model_config(mlp(depth=4, init=init, norm=norm), GRAY_8))

    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    assert len(linears) == 4 + 1, "four hidden layers and the classifier"
    assert linears[0].in_features == 64 and all(layer.in_features == 16 for layer in linears[1:])
    norms = [module for module in model.modules() if isinstance(module, (nn.BatchNorm1d, nn.LayerNorm))]
    assert len(norms) == (0 if norm == "none" else 4)
    assert all(type(module) is NORM_LAYERS[norm] for module in norms)
    hidden = linears[1:-1]  # square 16 x 16 layers
    if init == "orthogonal":
        for layer in hidden:  # W W^T = gain^2 I, the ReLU gain being sqrt(2)
            assert torch.allclose(layer.weight @ layer.weight.T, 2 * torch.eye(16), atol=1e-5)
    if init != "default":
        assert all(not layer.bias.any() for layer in linears[:-1]), "the hidden biases start at zero"
    else:
        assert all(layer.bias.any() for layer in linears[:-1]), "torch's own start, biases included"


@pytest.mark.parametrize(("init", "norm", "reaches_the_end"), [
    ("default", "none", False),
    ("kaiming", "none", True),
    ("orthogonal", "none", True),
    ("default", "batch", True),
    ("default", "layer", True),
])
def test_only_torch_s_default_start_without_normalization_loses_the_input_fifty_layers_deep(
        init: str, norm: str, reaches_the_end: bool) -> None:
    torch.manual_seed(0)
    model = build_model(model_config(mlp(depth=50, init=init, norm=norm, width=64), GRAY_8))
    spread = last_hidden_layer(model, torch.rand(64, 1, 8, 8)).std(dim=0).mean()  # across the inputs
    assert (spread > 1e-3) if reaches_the_end else (spread < 1e-6)


@pytest.mark.parametrize(("override", "problem"), [
    ({"init": "xavier"}, r"study\.extra\.deep\.model\.init: Input should be 'default', 'kaiming' or 'orthogonal'"),
    ({"norm": "group"}, r"study\.extra\.deep\.model\.norm: Input should be 'none', 'batch' or 'layer'"),
    ({"depth": 0}, r"study\.extra\.deep\.model\.depth: Input should be greater than or equal to 1"),
    ({"arch": "cnn", "depth": 50}, r"study\.extra\.deep\.model: depth 50: at most 6 for cnn .*only mlp goes deeper"),
    ({"arch": "cnn", "depth": 2}, r"study\.extra\.deep\.model: init and norm are options of arch mlp, not cnn"),
], ids=["init", "norm", "depth", "cnn-depth", "cnn-init"])
def test_a_bad_init_norm_or_depth_is_refused_naming_the_key_and_the_choices(override: dict, problem: str) -> None:
    model = {"arch": "mlp", "width": 8, "depth": 50, "dropout": 0.0, "init": "kaiming", "norm": "none"} | override
    with pytest.raises(ParamsError, match=problem):
        load_params(SHIPPED_PARAMS, {"study.extra": {"deep": {"model": model}}})


@pytest.mark.parametrize(("init", "norm"), [("orthogonal", "batch"), ("default", "none")])
def test_an_mlp_checkpoint_rebuilds_the_same_model_through_model_config(tmp_path: Path, init: str, norm: str) -> None:
    config = model_config(mlp(depth=5, init=init, norm=norm), GRAY_8)
    assert (config.init, config.norm) == (init, norm), "model_config carries the mlp's own options"
    torch.manual_seed(0)
    model = build_model(config)
    model(torch.rand(32, 1, 8, 8))  # a training-mode pass moves batch norm's running statistics
    model.eval()
    save_checkpoint(tmp_path / "model.pt", model.state_dict(), config, {"val_accuracy": 0.5})

    loaded, checkpoint = load_model(tmp_path / "model.pt")

    assert checkpoint.model_config == config
    images = torch.rand(3, 1, 8, 8)
    assert torch.equal(loaded(images), model(images))
