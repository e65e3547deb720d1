"""The flow's parameter overrides: validated with the whole file, then written into params.yaml.

params.yaml stays the one source of truth: DVC sees the new values (and records them in dvc.lock), and
a later `dvc repro` finds nothing to redo. The override itself is recorded as a Prefect artifact.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml as pyyaml
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.representer import RoundTripRepresenter

from pipelines.config import PARAMS_FILE, load_params
from pipelines.config.params import get_dotted, read_raw_params, set_dotted
from pipelines.core.atomic import atomic_path
from pipelines.kd import check_students

YAML_1_1 = pyyaml.resolver.Resolver()  # how PyYAML's safe_load, and so every stage, types a plain scalar


@task(name="override_params", cache_policy=NO_CACHE)
def override_params(project_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Validate params.yaml with `overrides` applied; if there are any, write them into the file.

    Invalid values (a distillation method's options included) raise ParamsError before anything is
    written, so no stage runs.
    """
    path = project_dir / PARAMS_FILE
    params = load_params(path, overrides)
    check_students(params)
    if overrides:
        before = read_raw_params(path)
        write_overrides(path, overrides)
        create_table_artifact(
            [
                {"key": key, "before": repr(get_dotted(before, key)), "after": repr(value)}
                for key, value in overrides.items()
            ],
            key="params-overrides",
            description=f"Overrides this flow run wrote into {path.name}",
        )
        get_run_logger().info("wrote overrides into %s: %s", path, overrides)
    return params.model_dump(mode="json")


def write_overrides(path: Path, overrides: dict[str, Any]) -> None:
    """Set each dotted key in the YAML file, keeping its comments and layout; an atomic rewrite. The file is
    read as every stage reads it first, so a key given twice is refused with the same message."""
    read_raw_params(path)
    yaml = YAML()  # round-trip mode: comments and key order survive
    yaml.width = 4096  # never wrap a long line of the file
    # Keep the file's spelling: `null` rather than an empty value, and new lists and maps inline ([16, 16]).
    yaml.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    # And each value so that the stages (PyYAML, YAML 1.1) read it as DVC (ruamel.yaml, YAML 1.2) does.
    yaml.representer.add_representer(float, _represent_float)
    yaml.representer.add_representer(str, _represent_str)
    document = yaml.load(path)
    for dotted, value in overrides.items():
        set_dotted(document, dotted, _inline(value), section=lambda: _inline({}))
    with atomic_path(path) as tmp:
        with open(tmp, "w") as file:
            yaml.dump(document, file)


def _represent_float(representer: RoundTripRepresenter, value: float) -> ScalarNode:
    """A float with its point: YAML 1.1 reads 1e-05 as a string, 1.0e-05 as the float."""
    text = repr(value)
    if not math.isfinite(value) or "e" not in text or "." in text:
        return representer.represent_float(value)
    mantissa, exponent = text.split("e")
    return representer.represent_scalar("tag:yaml.org,2002:float", f"{mantissa}.0e{exponent}")


def _represent_str(representer: RoundTripRepresenter, value: str) -> ScalarNode:
    """A string quoted where YAML 1.1 would read it unquoted as something else (yes, on, 12:30)."""
    if YAML_1_1.resolve(pyyaml.ScalarNode, value, (True, False)) != "tag:yaml.org,2002:str":
        return representer.represent_scalar("tag:yaml.org,2002:str", value, style="'")
    return representer.represent_str(value)


def _inline(value: Any) -> Any:
    """Lists and maps as ruamel nodes in flow style, so that they are written on one line like the file's own."""
    node: CommentedSeq | CommentedMap
    if isinstance(value, list):
        node = CommentedSeq(_inline(item) for item in value)
    elif isinstance(value, dict):
        node = CommentedMap((key, _inline(item)) for key, item in value.items())
    else:
        return value
    node.fa.set_flow_style()
    return node

