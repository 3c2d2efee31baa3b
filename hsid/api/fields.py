"""Declarative field specs: one definition validates an input value and documents it in OpenAPI."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from hsid.core.errors import InvalidInput

INT32_MAX = 2**31 - 1
# Every string gets a ceiling, so that no input can make a row (or a log line) absurdly large.
DEFAULT_MAX_LENGTH = 255
_INTEGER_TEXT = re.compile(r"[-+]?[0-9]{1,20}")
_NUMBER_TEXT = re.compile(r"[-+]?([0-9]{1,20}(\.[0-9]{0,20})?|\.[0-9]{1,20})([eE][-+]?[0-9]{1,3})?")


def check_text(value: str, name: str) -> str:
    """Refuse what PostgreSQL cannot store: NUL characters and lone surrogates."""
    if "\x00" in value:
        raise InvalidInput(f"{name} must not contain NUL characters", field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidInput(f"{name} is not valid Unicode text", field=name) from err
    return value


def check_json_text(value: Any, name: str) -> None:
    """check_text on every key and string inside a parsed JSON value (iteratively: any depth)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            check_text(item, name)
        elif isinstance(item, dict):
            for key, child in item.items():
                check_text(key, name)
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


def parse_datetime(text: str, name: str) -> datetime:
    """ISO-8601 to an aware UTC datetime; a time without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text) if len(text) <= 64 else None
        if moment is None:
            raise ValueError(text)
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError) as err:
        raise InvalidInput(f"{name} must be an ISO-8601 date-time", field=name) from err


@dataclass(frozen=True, slots=True, kw_only=True)
class Field:
    """An input value: from a JSON body (`from_json`) or from query/path text (`from_text`).

    Subclasses convert and check; every failure is InvalidInput naming the field, which
    the query parser turns into a 400 and the body parser leaves a 422.
    """

    description: str = ""
    required: bool = False
    nullable: bool = False
    default: Any = None
    json_type: ClassVar[str] = "string"

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.json_type, **self.constraints()}
        if self.nullable:
            out["nullable"] = True
        if self.description:
            out["description"] = self.description
        if self.default is not None:
            out["default"] = self.default
        return out

    def constraints(self) -> dict[str, Any]:
        return {}

    def from_json(self, value: Any, name: str) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise InvalidInput(f"{name} must not be null", field=name)
        return self.check(self.coerce_json(value, name), name)

    def from_text(self, text: str, name: str) -> Any:
        return self.check(self.coerce_text(check_text(text, name), name), name)

    def coerce_json(self, value: Any, name: str) -> Any:
        raise NotImplementedError

    def coerce_text(self, text: str, name: str) -> Any:
        raise InvalidInput(f"{name} cannot be given as text", field=name)

    def check(self, value: Any, name: str) -> Any:
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Str(Field):
    min_length: int = 0
    max_length: int = DEFAULT_MAX_LENGTH
    enum: tuple[str, ...] | None = None
    pattern: str | None = None  # matched in full (documented as ^(?:pattern)$)

    def constraints(self) -> dict[str, Any]:
        out: dict[str, Any] = {"maxLength": self.max_length}
        if self.min_length:
            out["minLength"] = self.min_length
        if self.enum is not None:
            out["enum"] = list(self.enum)
        if self.pattern is not None:
            out["pattern"] = f"^(?:{self.pattern})$"
        return out

    def coerce_json(self, value: Any, name: str) -> Any:
        if not isinstance(value, str):
            raise InvalidInput(f"{name} must be a string", field=name)
        return check_text(value, name)

    def coerce_text(self, text: str, name: str) -> Any:
        return text

    def check(self, value: str, name: str) -> str:
        if not self.min_length <= len(value) <= self.max_length:
            raise InvalidInput(
                f"{name} must be {self.min_length} to {self.max_length} characters", field=name)
        if self.enum is not None and value not in self.enum:
            raise InvalidInput(f"{name} must be one of {', '.join(self.enum)}", field=name)
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise InvalidInput(f"{name} has the wrong format", field=name)
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Int(Field):
    minimum: int = -INT32_MAX - 1
    maximum: int = INT32_MAX
    json_type: ClassVar[str] = "integer"

    def constraints(self) -> dict[str, Any]:
        return {"minimum": self.minimum, "maximum": self.maximum}

    def coerce_json(self, value: Any, name: str) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{name} must be an integer", field=name)
        return value

    def coerce_text(self, text: str, name: str) -> Any:
        if not _INTEGER_TEXT.fullmatch(text):
            raise InvalidInput(f"{name} must be an integer", field=name)
        return int(text)

    def check(self, value: int, name: str) -> int:
        if not self.minimum <= value <= self.maximum:
            raise InvalidInput(
                f"{name} must be between {self.minimum} and {self.maximum}", field=name)
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Num(Field):
    minimum: float | None = None
    maximum: float | None = None
    json_type: ClassVar[str] = "number"

    def constraints(self) -> dict[str, Any]:
        bounds = {"minimum": self.minimum, "maximum": self.maximum}
        return {key: value for key, value in bounds.items() if value is not None}

    def coerce_json(self, value: Any, name: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{name} must be a number", field=name)
        try:
            return float(value)
        except OverflowError as err:
            raise InvalidInput(f"{name} is out of range", field=name) from err

    def coerce_text(self, text: str, name: str) -> Any:
        if not _NUMBER_TEXT.fullmatch(text):
            raise InvalidInput(f"{name} must be a number", field=name)
        return float(text)

    def check(self, value: float, name: str) -> float:
        if not math.isfinite(value):
            raise InvalidInput(f"{name} must be a finite number", field=name)
        if (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        ):
            raise InvalidInput(
                f"{name} must be between {self.minimum} and {self.maximum}", field=name)
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Bool(Field):
    json_type: ClassVar[str] = "boolean"

    def coerce_json(self, value: Any, name: str) -> Any:
        if not isinstance(value, bool):
            raise InvalidInput(f"{name} must be true or false", field=name)
        return value

    def coerce_text(self, text: str, name: str) -> Any:
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0"):
            raise InvalidInput(f"{name} must be true or false", field=name)
        return lowered in ("true", "1")


@dataclass(frozen=True, slots=True, kw_only=True)
class DateTime(Field):
    def constraints(self) -> dict[str, Any]:
        return {"format": "date-time"}

    def coerce_json(self, value: Any, name: str) -> Any:
        if not isinstance(value, str):
            raise InvalidInput(f"{name} must be an ISO-8601 date-time string", field=name)
        return parse_datetime(check_text(value, name), name)

    def coerce_text(self, text: str, name: str) -> Any:
        return parse_datetime(text, name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Uuid(Field):
    def constraints(self) -> dict[str, Any]:
        return {"format": "uuid"}

    def coerce_json(self, value: Any, name: str) -> Any:
        if not isinstance(value, str):
            raise InvalidInput(f"{name} must be a UUID string", field=name)
        return self.coerce_text(value, name)

    def coerce_text(self, text: str, name: str) -> Any:
        try:
            if len(text) > 45:
                raise ValueError(text)
            return uuid.UUID(text)
        except ValueError as err:
            raise InvalidInput(f"{name} must be a UUID", field=name) from err


@dataclass(frozen=True, slots=True, kw_only=True)
class Arr(Field):
    items: Field
    min_items: int = 0
    max_items: int = 100
    json_type: ClassVar[str] = "array"

    def constraints(self) -> dict[str, Any]:
        out: dict[str, Any] = {"items": self.items.schema(), "maxItems": self.max_items}
        if self.min_items:
            out["minItems"] = self.min_items
        return out

    def coerce_json(self, value: Any, name: str) -> Any:
        if not isinstance(value, list):
            raise InvalidInput(f"{name} must be an array", field=name)
        if not self.min_items <= len(value) <= self.max_items:
            raise InvalidInput(
                f"{name} must have {self.min_items} to {self.max_items} items", field=name)
        return [self.items.from_json(item, f"{name}[{i}]") for i, item in enumerate(value)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Obj(Field):
    """A free-form JSON object (schedule, calibration data, extra context)."""

    json_type: ClassVar[str] = "object"

    def coerce_json(self, value: Any, name: str) -> Any:
        if not isinstance(value, dict):
            raise InvalidInput(f"{name} must be a JSON object", field=name)
        check_json_text(value, name)
        return value


@dataclass(frozen=True, slots=True)
class Body:
    """A JSON object body: unknown and immutable keys are refused, each field validated.

    `partial` (PATCH): nothing is required, no defaults apply, and at least one field must
    be given. The parsed dict holds only known keys, so its keys are safe column names.
    """

    fields: Mapping[str, Field]
    partial: bool = False
    immutable: frozenset[str] = frozenset()

    def parse(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise InvalidInput("the body must be a JSON object", field="body")
        for key in data:
            if key in self.immutable:
                raise InvalidInput(f"{key} cannot be changed", field=str(key))
            if key not in self.fields:
                raise InvalidInput(f"unknown field {key!r}", field=str(key))
        if self.partial and not data:
            raise InvalidInput("give at least one field to change", field="body")
        out: dict[str, Any] = {}
        for name, spec in self.fields.items():
            if name in data:
                out[name] = spec.from_json(data[name], name)
            elif spec.required and not self.partial:
                raise InvalidInput(f"{name} is required", field=name)
            elif spec.default is not None and not self.partial:
                out[name] = spec.default
        return out

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "object",
            "properties": {name: spec.schema() for name, spec in self.fields.items()},
            "additionalProperties": False,
        }
        required = [n for n, s in self.fields.items() if s.required and not self.partial]
        if required:
            out["required"] = required
        if self.partial:
            out["minProperties"] = 1
        return out


@dataclass(frozen=True, slots=True)
class Shape:
    """A response object, for the OpenAPI document only: every property is always present."""

    properties: Mapping[str, Mapping[str, Any]]
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "object",
            "properties": dict(self.properties),
            "required": list(self.properties),
            **self.extra,
        }
        if self.description:
            out["description"] = self.description
        return out


def out(json_type: str | None, nullable: bool = False, **extra: Any) -> dict[str, Any]:
    """A response property's schema; json_type None means any JSON value (json columns)."""
    schema: dict[str, Any] = {} if json_type is None else {"type": json_type, **extra}
    if nullable and json_type is not None:
        schema["nullable"] = True
    return schema


def pick(fields: Mapping[str, Field], *names: str) -> dict[str, Field]:
    """A subset of a resource's fields, so PATCH bodies reuse the create definitions."""
    return {name: fields[name] for name in names}
