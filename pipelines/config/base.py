"""What every section of params.yaml shares: immutability, unknown keys named with the allowed ones, and
one way to turn pydantic's errors into lines that name the key path in the file."""

from __future__ import annotations

import re
import reprlib
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


# How an error line shows the value given: short, however long or deep the value (YAML aliases can build a
# list of millions of items from a few lines).
VALUE_REPR = reprlib.Repr()
VALUE_REPR.maxlevel, VALUE_REPR.maxstring, VALUE_REPR.maxother = 2, 100, 100
PLAIN_KEY = re.compile(r"[^.\s'\"]([^.'\"]*[^.\s'\"])?")  # reads one way in a dotted path; others are quoted


def error_lines(error: ValidationError, raw: Any, prefix: str = "") -> list[str]:
    """One `  key.path: problem (got value)` line per error of validating `raw`; `prefix` is the key path of
    `raw` itself inside the file (e.g. `distill.student_kd`)."""
    lines = []
    for item in error.errors():
        path = ".".join(part for part in (prefix, _key_path(item["loc"], raw)) if part) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        got = "" if item["type"] in ("missing", "value_error") else f" (got {VALUE_REPR.repr(item['input'])})"
        lines.append(f"  {path}: {message}{got}")
    return lines


def key_path(parts: tuple[Any, ...]) -> str:
    """The dotted path of these keys (list positions as numbers); a key with a dot or a quote in it, space at
    either end, or an empty one, is quoted so that the path reads one way: distill.'..'."""
    return ".".join(str(part) if PLAIN_KEY.fullmatch(str(part)) else repr(str(part)) for part in parts)


def _key_path(loc: tuple[Any, ...], raw: Any) -> str:
    """The dotted path of a pydantic error location, without the union tags pydantic inserts, nor its
    `[key]` mark of an error in a key itself (a student's name): the path then ends at that key."""
    parts: list[Any] = []
    node = raw
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(node, dict) and node.get("name") == part and part not in node:
            continue  # the tag of a discriminated union (e.g. 'sgd'), not a key of the file
        if node is not None and not isinstance(node, (dict, list)):
            continue  # the tag of a plain union (e.g. 'constrained-int' of batch_size): a value has no keys
        parts.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]  # an item of a list (e.g. schedules.0), whose own keys may follow
        else:
            node = None
    return key_path(tuple(parts))
