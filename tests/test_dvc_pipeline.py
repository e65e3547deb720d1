"""dvc.yaml is the pipeline: `dvc repro` runs it end to end, reruns only what changed, and lists every dependency."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, run


def stages() -> dict[str, dict]:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def ran_stages(dvc_output: str) -> list[str]:
    return [line.split("'")[1] for line in dvc_output.splitlines() if line.startswith("Running stage '")]


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_then_finds_nothing_to_redo(project: Path) -> None:
    first = run(["dvc", "repro"], project)
    assert ran_stages(first.stdout) == list(stages())
    results = json.loads((project / "metrics" / "eval.json").read_text())
    assert set(results) == {"teacher", "student_baseline", "student_kd"}

    second = run(["dvc", "repro"], project)
    assert ran_stages(second.stdout) == []
    assert "Data and pipelines are up to date." in second.stdout
    assert "Data and pipelines are up to date." in run(["dvc", "status"], project).stdout


@pytest.mark.slow
def test_changing_a_distill_param_reruns_only_distill_and_evaluate(project: Path) -> None:
    run(["dvc", "repro"], project)
    experiment = run(["dvc", "exp", "run", "--set-param", "distill.temperature=2.0"], project)
    assert ran_stages(experiment.stdout) == ["distill", "evaluate"]
    assert "temperature: 2.0" in (project / "params.yaml").read_text()


@pytest.mark.slow
def test_a_stage_failing_on_bad_params_keeps_the_last_good_artifacts(project: Path) -> None:
    run(["dvc", "repro"], project)
    teacher = (project / "models" / "teacher.pt").read_bytes()
    good_params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(good_params.replace("lr: 0.05", "lr: -0.05"))

    failed = run(["dvc", "repro"], project, check=False)

    assert failed.returncode != 0
    assert "teacher.optimizer.lr: Input should be greater than 0" in failed.stdout + failed.stderr
    assert (project / "models" / "teacher.pt").read_bytes() == teacher
    (project / "params.yaml").write_text(good_params)
    assert "Data and pipelines are up to date." in run(["dvc", "status"], project).stdout


@pytest.mark.parametrize("stage", list(stages()))
def test_each_stage_lists_every_pipelines_module_it_runs_as_a_dependency(stage: str) -> None:
    definition = stages()[stage]
    module = definition["cmd"].split("-m ")[1].split()[0]
    declared = {dep for dep in definition["deps"] if dep.startswith("pipelines/")}
    assert imported_pipeline_files(module) == declared


def imported_pipeline_files(module: str) -> set[str]:
    """The pipelines/*.py files that `module` imports, directly or through other pipelines modules."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        path = name.replace(".", "/") + ".py"
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse((PROJECT_ROOT / path).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipelines."):
                pending.append(node.module)
            elif isinstance(node, ast.Import):
                pending += [alias.name for alias in node.names if alias.name.startswith("pipelines.")]
    return seen


def test_every_stage_output_is_a_path_the_stage_code_writes() -> None:
    from pipelines.core.paths import SPLITS, Paths

    paths = Paths(Path("."))
    written = {
        *(str(paths.split(name)) for name in SPLITS),
        str(paths.card),
        str(paths.transfer),
        str(paths.teacher_logits),
        *(str(paths.model(name)) for name in MODELS),
        *(str(paths.training_log(name) / "metrics.json") for name in MODELS),
        *(str(paths.training_log(name) / "plots") for name in MODELS),
        str(paths.eval_metrics),
        str(paths.confusion_plot("x").parent),
        str(paths.report),
    }
    declared = set()
    for definition in stages().values():
        for kind in ("outs", "metrics", "plots"):
            for entry in definition.get(kind, []):
                declared.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    assert declared == written
