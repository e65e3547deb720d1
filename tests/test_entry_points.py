"""Entry points import only what they use: a stage's --help and a params error need neither torch nor
scikit-learn, training needs no scikit-learn, and importing the Prefect side changes no environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tasks.environment import DEFAULTS
from tests.conftest import PROJECT_ROOT, SHIPPED_PARAMS

pytestmark = pytest.mark.integration  # each test runs a fresh interpreter

STAGES = ["check_params", "prepare", "augment", "train_teacher", "train_student", "teacher_logits", "teacher_features",
          "teacher_views", "distill", "evaluate", "report", "publish",
          "fetch", "remote", "readme_figure"]  # the last three are commands, not dvc.yaml stages


def modules_loaded_by(code: str, env: dict[str, str] | None = None) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{name.split('.')[0] for name in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_module_loads_without_torch_so_help_and_params_errors_answer_at_once(stage: str) -> None:
    loaded = modules_loaded_by(f"import pipelines.{stage}")
    assert not loaded & {"torch", "sklearn", "scipy", "pyarrow", "dvclive"}


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_s_help_exits_0_and_names_its_options(stage: str) -> None:
    result = subprocess.run([sys.executable, "-m", f"pipelines.{stage}", "--help"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "--params" in result.stdout


def test_training_and_distillation_do_not_load_scikit_learn() -> None:
    # scikit-learn (and SciPy under it) took 1.8 s of every training stage's start-up; prepare's split alone needs it.
    loaded = modules_loaded_by("import pipelines.engine.training, pipelines.kd, pipelines.train_student")
    assert "torch" in loaded and not loaded & {"sklearn", "scipy"}


def test_validating_params_does_not_load_torch() -> None:
    assert "torch" not in modules_loaded_by("from pipelines.config import load_params; "
                                            f"load_params({str(SHIPPED_PARAMS)!r})")


def test_importing_the_tasks_and_flows_changes_no_environment_variable() -> None:
    unset = {name: value for name, value in os.environ.items() if name not in DEFAULTS}  # as a fresh shell has it
    code = ("import os; before = dict(os.environ)\n"
            "import tasks, tasks.dvc_stages, tasks.params, tasks.report, tasks.environment, "
            "flows.distillation, flows.study\n"
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())")
    modules_loaded_by(code, env=unset)


def test_the_flow_s_entry_point_sets_the_quiet_offline_defaults_for_its_run() -> None:
    unset = {name: value for name, value in os.environ.items() if name not in DEFAULTS}
    code = ("from prefect.settings import get_current_settings\n"
            "from tasks.environment import quiet_offline\n"
            "with quiet_offline():\n"
            "    settings = get_current_settings()\n"
            "    print(settings.home, settings.server.analytics_enabled)\n"
            "import os; print(os.environ['DVC_NO_ANALYTICS'])")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, env=unset)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{PROJECT_ROOT / '.prefect'} False", "1"]
