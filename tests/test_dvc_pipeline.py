"""dvc.yaml is the pipeline: `dvc repro` runs it end to end, reruns only what changed, and lists every dependency."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from pipelines.core.paths import SPLITS, Paths
from tasks.params import write_overrides
from tests.conftest import PROJECT_ROOT, run


def stages() -> dict[str, dict]:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def ran_stages(dvc_output: str) -> list[str]:
    return [line.split("'")[1] for line in dvc_output.splitlines() if line.startswith("Running stage '")]


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_then_finds_nothing_to_redo(first_repro: tuple[Path, str],
                                                               reproduced_project: Path) -> None:
    project, (_, printed) = reproduced_project, first_repro  # a copy of a fresh project after its first repro
    assert ran_stages(printed) == list(resolved_stages())
    results = json.loads((project / "metrics" / "eval.json").read_text())
    assert set(results) == {"teacher", "student_baseline", "student_kd"}

    second = run(["dvc", "repro"], project)
    assert ran_stages(second.stdout) == []
    assert "Data and pipelines are up to date." in second.stdout
    assert "Data and pipelines are up to date." in run(["dvc", "status"], project).stdout


@pytest.mark.slow
def test_changing_a_student_s_param_reruns_only_that_student_evaluate_report_and_publish(
        reproduced_project: Path) -> None:
    project = reproduced_project  # after one dvc repro
    experiment = run(["dvc", "exp", "run", "--set-param", "distill.student_kd.losses.0.temperature=2.0"], project)
    assert ran_stages(experiment.stdout) == ["check_params", "teacher_features@student_kd", "teacher_views@student_kd",
                                             "distill@student_kd", "evaluate", "report", "publish"]  # (publish: off,
    # it records that; teacher_views: no cache for this student, it writes its manifest again)
    assert "temperature: 2.0" in (project / "params.yaml").read_text()


def changed_stages(project: Path) -> list[str]:
    """The stages `dvc status` finds changed (their own dependencies, not those downstream of them)."""
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    return sorted(status)


@pytest.mark.slow
def test_how_processes_meet_restart_or_load_batches_retrains_nothing_and_how_steps_split_retrains_every_model(
        reproduced_project: Path) -> None:
    project = reproduced_project  # after one dvc repro
    write_overrides(project / "params.yaml", {"distributed.timeout_s": 60, "distributed.max_restarts": 2,
                                              "distributed.rdzv_endpoint": "10.0.0.1:29500", "speed.pin_memory": False})
    assert changed_stages(project) == ["check_params"]  # which checks every key, and writes what it wrote before

    write_overrides(project / "params.yaml", {"distributed.grad_accum_steps": 2})
    assert changed_stages(project) == ["check_params", "distill@student_kd", "train_student", "train_teacher"]


@pytest.mark.slow
def test_code_changes_rerun_only_the_stages_that_run_that_code(reproduced_project: Path) -> None:
    project = reproduced_project  # after one dvc repro
    method = project / "pipelines" / "kd" / "kd.py"
    method.write_text(method.read_text() + "\n# an edit of the distillation method\n")
    # Not the teacher, not the baseline: the student, the stage storing its teacher features (which asks
    # pipelines/kd which layers the student reads) and the check of params.yaml (which asks it what a method takes).
    assert changed_stages(project) == ["check_params", "distill@student_kd", "teacher_features@student_kd"]

    run(["dvc", "repro"], project)
    wording = project / "pipelines" / "evaluation" / "report.py"
    wording.write_text(wording.read_text().replace("Per-class F1:", "F1 of each class:"))
    assert changed_stages(project) == ["report"]  # the measurements (latency included) stay
    rerun = run(["dvc", "repro"], project)
    assert ran_stages(rerun.stdout) == ["report"]
    assert "F1 of each class:" in (project / "reports" / "report.md").read_text()

    loop = project / "pipelines" / "engine" / "loop.py"
    loop.write_text(loop.read_text() + "\n# an edit of the training loop\n")
    assert changed_stages(project) == ["distill@student_kd", "train_student", "train_teacher"]


@pytest.mark.slow
def test_a_second_student_in_params_trains_beside_the_first_and_joins_the_report(reproduced_project: Path) -> None:
    project = reproduced_project  # after one dvc repro
    write_overrides(project / "params.yaml", {
        "distill.student_t2": {"losses": [{"method": "kd", "weight": 0.5, "temperature": 2.0},
                                          {"method": "ce", "weight": 0.5}],
                               "model": {"arch": "cnn", "width": 3, "depth": 1, "dropout": 0.0}, "teacher": "live"},
    })
    rerun = run(["dvc", "repro"], project)
    assert ran_stages(rerun.stdout) == ["check_params", "teacher_features@student_t2", "teacher_views@student_t2",
                                        "distill@student_t2", "evaluate", "report", "publish"]
    assert (project / "models" / "student_t2.pt").exists()
    assert (project / "metrics" / "train" / "student_t2" / "metrics.json").exists()
    results = json.loads((project / "metrics" / "eval.json").read_text())
    assert list(results) == ["teacher", "student_baseline", "student_kd", "student_t2"]
    assert results["student_t2"]["params"] != results["student_kd"]["params"]  # another size
    report = (project / "reports" / "report.md").read_text()
    assert "| student_t2 |" in report
    assert "student_t2 (0.5 kd (temperature 2) + 0.5 ce, teacher live on mixed views)" in report
    assert "Data and pipelines are up to date." in run(["dvc", "status"], project).stdout


@pytest.mark.slow
def test_a_stage_failing_on_bad_params_keeps_the_last_good_artifacts(reproduced_project: Path) -> None:
    project = reproduced_project  # after one dvc repro
    teacher = (project / "models" / "teacher.pt").read_bytes()
    good_params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(good_params.replace("lr: 0.05", "lr: -0.05"))

    failed = run(["dvc", "repro"], project, check=False)

    assert failed.returncode != 0
    assert "teacher.optimizer.lr: Input should be greater than 0" in failed.stdout + failed.stderr
    assert (project / "models" / "teacher.pt").read_bytes() == teacher
    (project / "params.yaml").write_text(good_params)
    assert "Data and pipelines are up to date." in run(["dvc", "status"], project).stdout


def resolved_stages() -> dict[str, dict]:
    """dvc.yaml's stages with `foreach` expanded for the shipped params (distill@student_kd), as DVC sees them."""
    from dvc.repo import Repo

    with Repo(str(PROJECT_ROOT)) as repo:
        return {stage.name: stage for stage in repo.index.stages}


@pytest.mark.parametrize("stage", list(stages()))
def test_each_stage_lists_exactly_the_pipelines_code_it_runs_as_dependencies(stage: str) -> None:
    definition = stages()[stage].get("do", stages()[stage])
    module = definition["cmd"].split("-m ")[1].split()[0]
    declared = [dep for dep in definition["deps"] if dep.startswith("pipelines/")]
    listed = set()
    for dep in declared:  # a package folder stands for every module in it
        path = PROJECT_ROOT / dep
        listed |= {str(file.relative_to(PROJECT_ROOT)) for file in path.rglob("*.py")} if path.is_dir() else {dep}
    used = imported_pipeline_files(module)
    assert used <= listed, f"{stage} runs code it does not depend on: {sorted(used - listed)}"
    unused = {file for file in listed - used if not file.endswith("__init__.py")}
    assert not unused, f"{stage} depends on code it never runs: {sorted(unused)}"


def imported_pipeline_files(module: str) -> set[str]:
    """The pipelines/ files that `module` imports, directly or through other pipelines modules (imports inside
    functions included: stages import their heavy modules there)."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        path = module_file(name)
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse((PROJECT_ROOT / path).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipelines."):
                pending.append(node.module)
                # `from pipelines.data.sources import torchvision` imports a module too
                pending += [f"{node.module}.{alias.name}" for alias in node.names
                            if (PROJECT_ROOT / module_file(f"{node.module}.{alias.name}")).exists()]
            elif isinstance(node, ast.Import):
                pending += [alias.name for alias in node.names if alias.name.startswith("pipelines.")]
    return seen


def module_file(module: str) -> str:
    path = module.replace(".", "/")
    return f"{path}/__init__.py" if (PROJECT_ROOT / path).is_dir() else f"{path}.py"


def test_every_stage_output_is_a_path_the_stage_code_writes() -> None:
    paths = Paths(Path("."))
    models = ("teacher", "student_baseline", "student_kd")  # those of the shipped params.yaml
    written = {
        str(paths.params_check),
        *(str(paths.split(name)) for name in SPLITS),
        str(paths.card),
        str(paths.transfer),
        str(paths.teacher_logits),
        str(paths.teacher_features("student_kd")),
        str(paths.teacher_views("student_kd")),
        *(str(paths.model(name)) for name in models),
        str(paths.heads("student_kd")),
        *(str(paths.training_log(name) / "metrics.json") for name in models),
        *(str(paths.training_log(name) / "plots") for name in models),
        str(paths.eval_metrics),
        str(paths.confusion_plot("x").parent),
        str(paths.report),
        str(paths.report_html),
        str(paths.publish_record),
    }
    declared = {str(out) for stage in resolved_stages().values() for out in stage.outs}
    assert declared == written


def test_the_check_of_every_param_comes_first_and_every_other_stage_waits_for_it() -> None:
    check, *others = resolved_stages().values()
    assert check.name == "check_params"
    assert [(str(dep), dep.params) for dep in check.deps if not str(dep).startswith("pipelines/")] == [
        ("params.yaml", [])]  # no keys: all of them
    assert [(str(out), out.use_cache, out.persist) for out in check.outs] == [("reports/params_check.txt", True, True)]
    assert all("reports/params_check.txt" in [str(dep) for dep in stage.deps] for stage in others)


def test_a_distilled_student_is_one_dvc_stage_per_name_in_params() -> None:
    distill = {name: stage for name, stage in resolved_stages().items() if name.startswith("distill@")}
    assert list(distill) == ["distill@student_kd"]
    stage = distill["distill@student_kd"]
    assert stage.cmd == "python -m pipelines.distill --student student_kd"
    assert [str(out) for out in stage.outs] == [
        "models/student_kd.pt", "models/student_kd.heads.pt", "metrics/train/student_kd/metrics.json",
        "metrics/train/student_kd/plots"]


LAYERS = {  # each library package, and the packages it may import
    "config": set(),
    "core": {"config"},
    "storage": {"config", "core"},
    "data": {"config", "core", "storage"},
    "models": {"config", "core"},
    "engine": {"config", "core", "data", "models"},
    "kd": {"config", "core", "data", "models", "engine"},
    "evaluation": {"config", "core", "data", "models", "engine"},
}


@pytest.mark.parametrize("package", list(LAYERS))
def test_imports_point_one_way_from_the_stages_down_to_core_and_config(package: str) -> None:
    for file in (PROJECT_ROOT / "pipelines" / package).rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                top = name.split(".")
                assert top[0] not in ("tasks", "flows", "prefect"), f"{file}: imports {name}"
                if top[0] == "pipelines":
                    assert len(top) > 1 and top[1] in LAYERS, f"{file}: imports the stage {name}"
                    assert top[1] in LAYERS[package] | {package}, f"{file}: {package} imports {name}"


def import_graph() -> dict[str, set[str]]:
    """Each module of pipelines/, tasks/ and flows/ (a package's __init__ under the package's name) and the
    modules of these it imports, anywhere in it: an import inside a function is an edge too, whatever it is
    there for. `from package import name` imports the submodule `name` where there is one, else the package."""
    files = {path: path.relative_to(PROJECT_ROOT).with_suffix("").parts
             for top in ("pipelines", "tasks", "flows") for path in (PROJECT_ROOT / top).rglob("*.py")}
    modules = {".".join(parts[:-1] if parts[-1] == "__init__" else parts): path for path, parts in files.items()}

    def named(name: str) -> str | None:  # the module `name` is, or is in (`pipelines.kd.base.Term`)
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        names = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.level == 0, f"{path}: a relative import"
                names += [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                          for alias in node.names]
        graph[module] = {found for found in map(named, names) if found is not None and found != module}
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str]:
    """A cycle of `graph` (its first module repeated at its end), or [] where there is none."""
    done: set[str] = set()
    path: list[str] = []  # the modules being visited, each importing the next

    def visit(module: str) -> list[str]:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done:
            return []
        path.append(module)
        for imported in sorted(graph[module]):
            if cycle := visit(imported):
                return cycle
        path.pop()
        done.add(module)
        return []

    return next((cycle for module in sorted(graph) if (cycle := visit(module))), [])


def test_the_import_graph_sees_imports_inside_functions_and_of_submodules_and_finds_cycles() -> None:
    graph = import_graph()
    assert "pipelines.core.rendezvous" in graph["pipelines.core.launch"]  # `from pipelines.core import rendezvous`
    assert "pipelines.engine.training" in graph["pipelines.train_teacher"]  # inside the stage's function
    assert "pipelines.models" in graph["pipelines.engine.checkpoint"]  # `from pipelines.models import build_model`
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_module_of_pipelines_tasks_or_flows_imports_itself_through_others() -> None:
    cycle = cycle_in(import_graph())
    assert not cycle, f"an import cycle: {' -> '.join(cycle)}"


def test_no_stage_imports_prefect_or_the_flows() -> None:
    for file in (PROJECT_ROOT / "pipelines").glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            assert not any(name.split(".")[0] in ("tasks", "flows", "prefect") for name in names), file


def test_the_top_of_pipelines_holds_only_stage_entry_points() -> None:
    modules = {path.stem for path in (PROJECT_ROOT / "pipelines").glob("*.py")} - {"__init__"}
    stage_modules = {definition.get("do", definition)["cmd"].split("-m ")[1].split()[0].split(".")[1]
                     for definition in stages().values()}
    # The studies' entry points, which their flows run (flows/study.py, flows/kd_methods.py), the command a
    # serving system runs to get a published student, and the ones `make remote` and `make readme-figure` run.
    assert modules == stage_modules | {"study", "kd_study", "fetch", "remote", "readme_figure"}
    for module in modules:
        assert 'if __name__ == "__main__":' in (PROJECT_ROOT / "pipelines" / f"{module}.py").read_text()


def test_every_shipped_model_is_a_dvc_artifact_at_its_checkpoint() -> None:
    from pipelines.config import load_params
    from tests.conftest import SHIPPED_PARAMS

    artifacts = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["artifacts"]
    models = load_params(SHIPPED_PARAMS).model_names
    assert {name: artifact["path"] for name, artifact in artifacts.items()} == {
        model.replace("_", "-"): str(Paths(Path(".")).model(model)) for model in models}
    assert all(artifact["type"] == "model" for artifact in artifacts.values())
