"""The flow's parameter overrides: validated with the whole file, then written into params.yaml.

params.yaml stays the one source of truth: DVC sees the new values (and records them in dvc.lock), and
a later `dvc repro` finds nothing to redo. The override itself is recorded as a Prefect artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from pipelines.config import PARAMS_FILE, load_params
from pipelines.config.params import list_index, read_raw_params
from pipelines.core.atomic import atomic_path
from pipelines.kd import check_students


@task(name="apply_overrides", cache_policy=NO_CACHE)
def apply_overrides(project_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Validate params.yaml with `overrides` applied; if there are any, write them into the file.

    Invalid values (a distillation method's options included) raise ParamsError before anything is
    written, so no stage runs.
    """
    path = project_dir / PARAMS_FILE
    params = load_params(path, overrides)
    check_students(params, str(path))
    if overrides:
        before = read_raw_params(path)
        write_overrides(path, overrides)
        create_table_artifact(
            [
                {"key": key, "before": repr(_lookup(before, key)), "after": repr(value)}
                for key, value in overrides.items()
            ],
            key="params-overrides",
            description=f"Overrides this flow run wrote into {path.name}",
        )
        get_run_logger().info("wrote overrides into %s: %s", path, overrides)
    return params.model_dump(mode="json")


def write_overrides(path: Path, overrides: dict[str, Any]) -> None:
    """Set each dotted key in the YAML file, keeping its comments and layout; an atomic rewrite."""
    yaml = YAML()  # round-trip mode: comments and key order survive
    yaml.width = 4096  # never wrap a long line of the file
    # Keep the file's spelling: `null` rather than an empty value, and new lists and maps inline ([16, 16]).
    yaml.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    document = yaml.load(path)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = document
        for key in parents:
            if isinstance(node, list):  # an item of a list, by its index (distill.student_kd.losses.0.weight)
                node = node[list_index(node, key, dotted)]
                continue
            if node.get(key) is None:  # a missing section, or one left `null` (teacher.distributed: null)
                node[key] = _inline({})
            node = node[key]
        node[list_index(node, leaf, dotted) if isinstance(node, list) else leaf] = _inline(value)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as file:
            yaml.dump(document, file)


def _inline(value: Any) -> Any:
    """Lists and maps as ruamel nodes in flow style, so that they are written on one line like the file's own."""
    if isinstance(value, list):
        node = CommentedSeq(_inline(item) for item in value)
    elif isinstance(value, dict):
        node = CommentedMap((key, _inline(item)) for key, item in value.items())
    else:
        return value
    node.fa.set_flow_style()
    return node


def _lookup(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node
