"""The engine's shape (docs/architecture.md): one strategy interface that every strategy implements on its own,
a loop that reads top to bottom, and an objective that carries nothing of pipeline parallelism."""

from __future__ import annotations

import ast
import inspect

import pytest

from pipelines.engine import loop
from pipelines.engine.objective import Objective
from pipelines.engine.strategies import STRATEGIES, strategy_class
from pipelines.engine.strategies.base import Strategy
from pipelines.engine.strategies.single import OneProcess
from pipelines.kd.base import Term
from tests.conftest import PROJECT_ROOT

STRATEGY_CLASSES = [OneProcess, *map(strategy_class, STRATEGIES)]
INTERFACE = [name for name in vars(Strategy) if not name.startswith("_")]


@pytest.mark.parametrize("strategy", STRATEGY_CLASSES, ids=lambda strategy: strategy.__name__)
def test_every_strategy_implements_the_interface_with_its_signatures_and_subclasses_none(strategy: type) -> None:
    assert strategy.__bases__ == (object,)
    for name in INTERFACE:
        assert inspect.signature(getattr(strategy, name)) == inspect.signature(getattr(Strategy, name)), name


def test_no_strategy_module_imports_another() -> None:
    modules = {strategy.__module__.rpartition(".")[2] for strategy in STRATEGY_CLASSES}
    for module in modules:
        tree = ast.parse((PROJECT_ROOT / "pipelines" / "engine" / "strategies" / f"{module}.py").read_text())
        imported = {node.module.rpartition(".")[2] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & (modules - {module}), module


def test_fit_is_at_most_60_lines_with_no_branch_on_a_missing_part() -> None:
    source = inspect.getsource(loop.fit)
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.FunctionDef)
    assert body.end_lineno is not None and body.end_lineno - body.lineno + 1 <= 60
    comparisons = [node for node in ast.walk(body) if isinstance(node, ast.Compare)
                   and any(isinstance(operator, (ast.Is, ast.IsNot)) for operator in node.ops)]
    assert comparisons == []
    assert "torch.distributed" not in inspect.getsource(loop)  # the processes are the strategies' business


@pytest.mark.parametrize("base", [Objective, Term])
def test_an_objective_and_a_loss_term_are_a_loss_with_setup_and_teardown(base: type) -> None:
    own = {name for name, value in vars(base).items() if callable(value) and not name.startswith("_")}
    assert own - {"create"} == {"setup", "forward", "teardown"}
