"""A table of named option schemas, keyed by the `name` each schema accepts (its Literal), so a name is
written once: in the schema class that parses its options."""

from __future__ import annotations

import typing
from typing import Annotated, Any, TypeVar, Union

from pydantic import BaseModel, Field

Schema = TypeVar("Schema", bound=BaseModel)


def by_name(*schemas: type[Schema]) -> dict[str, type[Schema]]:
    """{name: schema} for schemas whose `name` field is a Literal of one or more names."""
    table: dict[str, type[Schema]] = {}
    for schema in schemas:
        for name in typing.get_args(schema.model_fields["name"].annotation):
            table[name] = schema
    return table


def tagged_union(table: dict[str, type]) -> Any:
    """The pydantic type that parses any schema of `table`, chosen by the value of `name`."""
    return Annotated[Union[tuple(dict.fromkeys(table.values()))], Field(discriminator="name")]
