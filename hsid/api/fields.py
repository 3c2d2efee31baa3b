"""The API's shapes as pydantic models: one declaration per resource shape validates input,
names the SQL columns and documents it in OpenAPI.

Field types are Annotated types that carry the API's rules: every string has a ceiling and
refuses what PostgreSQL cannot store (NUL, lone surrogates), integers are int32 unless
widened, numbers are finite, date-times become aware UTC. Text, Int, Num and Arr give the
rules of a str, int, float or list, to put beside it: Annotated[str, Text(64)].
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, TypeAlias

from annotated_types import GroupedMetadata
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

INT32_MAX = 2**31 - 1
# Every string gets a ceiling, so that no input can make a row (or a log line) absurdly large.
DEFAULT_MAX_LENGTH = 255


def check_text(value: str) -> str:
    """Refuse what PostgreSQL cannot store: NUL characters and lone surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError("is not valid Unicode text") from err
    return value


def check_json_text(value: Any) -> Any:
    """check_text on every key and string inside a parsed JSON value (iteratively: any depth)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            check_text(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                check_text(key)
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return value


def _utc(value: Any) -> Any:
    """ISO-8601 text to an aware UTC datetime; a time without an offset is taken as UTC."""
    if not isinstance(value, str):
        raise ValueError("must be an ISO-8601 date-time string")
    try:
        moment = datetime.fromisoformat(check_text(value)) if len(value) <= 64 else None
        if moment is None:
            raise ValueError(value)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError) as err:
        raise ValueError("must be an ISO-8601 date-time") from err


def _uuid(value: Any) -> Any:
    if not isinstance(value, str) or len(value) > 45:
        raise ValueError("must be a UUID")
    try:
        return uuid.UUID(value)
    except ValueError as err:
        raise ValueError("must be a UUID") from err


@dataclass(frozen=True)
class Rules(GroupedMetadata):
    """Constraints and validators as one item of Annotated[...]; pydantic unpacks it."""

    items: tuple[object, ...]

    def __iter__(self) -> Iterator[object]:
        return iter(self.items)


def Text(max_length: int = DEFAULT_MAX_LENGTH, min_length: int | None = None,
         pattern: str | None = None) -> Rules:
    """A string's rules; `pattern` is matched in full (documented as ^(?:pattern)$)."""
    return Rules((*Field(min_length=min_length, max_length=max_length,
                         pattern=None if pattern is None else f"^(?:{pattern})$").metadata,
                  AfterValidator(check_text)))


def Int(ge: int = -INT32_MAX - 1, le: int = INT32_MAX) -> Rules:
    return Rules(tuple(Field(ge=ge, le=le).metadata))


def Num(ge: float | None = None, le: float | None = None) -> Rules:
    return Rules(tuple(Field(ge=ge, le=le, allow_inf_nan=False).metadata))


def Arr(min_length: int | None = None, max_length: int = 100) -> Rules:
    return Rules(tuple(Field(min_length=min_length, max_length=max_length).metadata))


Str: TypeAlias = Annotated[str, Text()]


def Absent(description: str | None = None) -> Any:
    """The default of a field a client may leave out but not send as null: parse_body then
    leaves the key out, parse_params gives None. The field's type stays the one a client may
    send (null is refused, the schema is not nullable); so this default is typed Any."""
    return Field(None, description=description)
DateTime = Annotated[datetime, BeforeValidator(_utc)]
Uuid = Annotated[uuid.UUID, BeforeValidator(_uuid)]
Obj = Annotated[dict[str, Any], AfterValidator(check_json_text)]  # free-form JSON object


class Shape(BaseModel):
    """A response, query or path shape: its fields in the order the API shows them."""

    model_config = ConfigDict(defer_build=True)


class Body(BaseModel):
    """A JSON object body: unknown keys are refused (additionalProperties: false)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    partial: ClassVar[bool] = False
    immutable: ClassVar[frozenset[str]] = frozenset()


class Patch(Body):
    """A PATCH body: nothing required, no defaults apply, at least one field given; keys in
    `immutable` are refused as "cannot be changed" rather than unknown."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})
    partial: ClassVar[bool] = True


def partial(model: type[Body], *names: str,
            immutable: frozenset[str] = frozenset()) -> type[Patch]:
    """A PATCH body from a create body's fields (all of them when no names are given)."""
    fields = {field: (info.annotation, FieldInfo.merge_field_infos(info, default=None))
              for field, info in model.model_fields.items() if not names or field in names}
    patch = create_model(model.__name__.removesuffix("Body") + "Patch",
                         __base__=Patch, **fields)  # type: ignore[call-overload]
    patch.immutable = immutable
    return patch


def params(base: type[Shape] = Shape, **fields: Any) -> type[Shape]:
    """A route's path or query parameters: name=(type, default or Field(...))."""
    return create_model(base.__name__, __base__=base, **fields)


def shape(name: str, **fields: Any) -> type[Shape]:
    """A small response object: name=type, every property always present."""
    return create_model(name, __base__=Shape, **fields)


def columns(model: type[BaseModel], sql: dict[str, str] | None = None,
            exclude: tuple[str, ...] = (), prefix: str = "") -> str:
    """The SELECT list of a response model: its field names in order (or `sql`'s text)."""
    sql = sql or {}
    return ", ".join(sql.get(name, prefix + name) for name in model.model_fields
                     if name not in exclude)


class OpenApiSchema(GenerateJsonSchema):
    """JSON Schema as OpenAPI 3.0 spells it: `nullable`, no titles, no `default: null`."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        return {"allOf": [inner], "nullable": True} if "$ref" in inner else {**inner,
                                                                          "nullable": True}

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        out = super().default_schema(schema)
        if "default" in out and out["default"] is None:
            del out["default"]
        return out

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        out = super().model_schema(schema)
        out.pop("title", None)
        return out
