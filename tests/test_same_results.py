"""The layout change kept the results: a short run trains the same weights as the code before it did.

tests/data/tiny_run_before_the_layout.json holds, for each model of the tiny run (TINY_OVERRIDES on the
shipped params.yaml), the sha256 of its state dict and the sum and absolute sum of every tensor, recorded
with the code before the move. On the machine it was recorded on, the new code's weights are bit-identical
(the same sha256, checked by hand for this run and for the full-size one); CPU kernels of another
processor may round differently, so the test compares the per-tensor sums with a tolerance far below what
any change of the training would move them.
"""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines.config import load_params
from pipelines.core.paths import Paths
from pipelines.engine.checkpoint import load_checkpoint
from pipelines.evaluate import evaluate
from tests.conftest import PROJECT_ROOT, SHIPPED_PARAMS, STORED_KD, TINY_OVERRIDES

BEFORE = json.loads((PROJECT_ROOT / "tests" / "data" / "tiny_run_before_the_layout.json").read_text())["models"]


@pytest.fixture(scope="module")
def recorded_run(trained_pipeline, tmp_path_factory: pytest.TempPathFactory):
    """(params, paths) of the tiny run with the params the record was made with: the shipped ones of then, whose
    students trained on the stored transfer set, student_kd on the teacher's stored logits at T = 4 (the shipped
    ones now train on fresh views, student_kd by function matching, docs/kd_methods.md). The two students are
    trained again, in a copy of the shared run; the teacher's section is as it was."""
    from pipelines.distill import distill
    from pipelines.train_student import train_student

    _, shared = trained_pipeline
    paths = Paths(tmp_path_factory.mktemp("recorded_run") / "root")
    shutil.copytree(shared.root, paths.root)
    params = load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, **STORED_KD,
                                          "distill.student_kd.losses.0.temperature": 4.0})
    train_student(params, paths)
    distill(params, paths, "student_kd")
    return params, paths


@pytest.mark.parametrize("model", list(BEFORE))
def test_each_model_of_a_short_run_has_the_weights_recorded_before_the_move(recorded_run, model: str) -> None:
    _, paths = recorded_run
    state = load_checkpoint(paths.model(model)).state_dict
    recorded = BEFORE[model]["tensors"]
    assert set(state) == set(recorded)
    for name, tensor in state.items():
        values = tensor.double()
        assert float(values.sum()) == pytest.approx(recorded[name]["sum"], rel=1e-5, abs=1e-6), name
        assert float(values.abs().sum()) == pytest.approx(recorded[name]["abs_sum"], rel=1e-5, abs=1e-6), name


def test_the_short_run_s_test_accuracies_are_those_recorded_before_the_move(recorded_run, tmp_path) -> None:
    params, shared = recorded_run
    paths = Paths(tmp_path / "root")
    shutil.copytree(shared.root, paths.root)
    results = evaluate(params.model_copy(update={
        "evaluate": params.evaluate.model_copy(update={"latency_repeats": 1})}), paths)
    for model, recorded in BEFORE.items():
        assert results[model]["accuracy"] == pytest.approx(recorded["test_accuracy"], abs=1e-6), model
