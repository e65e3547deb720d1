"""What every section of params.yaml shares: immutability, unknown keys named with the allowed ones, and
one way to turn pydantic's errors into lines that name the key path in the file."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ParamsError(ValueError):
    """params.yaml (or an override of it) is invalid; the message is meant for the user as is."""


class Section(BaseModel):
    """A block of params.yaml: immutable, and an unknown key is an error that lists the allowed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.model_config.get("extra") == "forbid":
            unknown = sorted(str(key) for key in data if key not in cls.model_fields)
            if unknown:
                allowed = ", ".join(cls.model_fields)
                raise ValueError(f"unknown key(s) {', '.join(unknown)}; allowed keys here: {allowed}")
        return data


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


def error_lines(error: ValidationError, raw: Any, prefix: str = "") -> list[str]:
    """One `  key.path: problem (got value)` line per error of validating `raw`; `prefix` is the key path of
    `raw` itself inside the file (e.g. `distill.student_kd`)."""
    lines = []
    for item in error.errors():
        path = ".".join(part for part in (prefix, _key_path(item["loc"], raw)) if part) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        got = "" if item["type"] in ("missing", "value_error") else f" (got {item['input']!r})"
        lines.append(f"  {path}: {message}{got}")
    return lines


def _key_path(loc: tuple[Any, ...], raw: Any) -> str:
    """The dotted key path of a pydantic error location, without the union tags pydantic inserts."""
    parts: list[str] = []
    node = raw
    for part in loc:
        if isinstance(node, dict) and node.get("name") == part and part not in node:
            continue  # the tag of a discriminated union (e.g. 'sgd'), not a key of the file
        if node is not None and not isinstance(node, (dict, list)):
            continue  # the tag of a plain union (e.g. 'constrained-int' of batch_size): a value has no keys
        parts.append(str(part))
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]  # an item of a list (e.g. schedules.0), whose own keys may follow
        else:
            node = None
    return ".".join(parts)
