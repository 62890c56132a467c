"""The one conversion between persisted records and JSON, driven by the records' field types.

Every boundary that stores or sends a record (the SQLite rows, the in-memory store's copies, the
control protocol's messages) goes through `to_json` / `from_json`, so a new field is one edit to
the dataclass (plus a schema migration for SQLite). Per field type:

- `int`, `float`, `str` (optionally `| None`): the value, coerced to the type;
- a `StrEnum`: its value;
- `list[...]` / `dict[...]`: a JSON deep copy;
- a typed record with `to_dict` / `from_dict` (`RoundMetrics`, `VersionMeta`): those.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from typing import Any, Literal, Protocol, TypeVar

__all__ = ["FieldCodec", "field_codecs", "from_json", "is_structured", "normalized", "to_json"]

R = TypeVar("R")
Shape = Literal["scalar", "enum", "json", "object"]


class _Serializable(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class FieldCodec:
    name: str
    shape: Shape
    type: Any  # the field's type without `| None`
    optional: bool

    def encode(self, value: Any) -> Any:
        if value is None:
            return None
        if self.shape == "enum":
            return self.type(value).value  # ValueError for a value not in the enum
        if self.shape == "object":
            value = typing.cast(_Serializable, value).to_dict()
        if self.shape in ("json", "object"):
            return json.loads(json.dumps(value))  # a deep copy: callers never alias records
        return self.type(value)

    def decode(self, value: Any) -> Any:
        if value is None:
            if not self.optional:
                raise ValueError(f"field {self.name!r} is missing")
            return None
        if self.shape == "object":
            return self.type.from_dict(value)
        if self.shape == "json":
            return json.loads(json.dumps(value))
        return self.type(value)


def _field_codec(name: str, hint: Any) -> FieldCodec:
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    if optional:
        (hint,) = [a for a in args if a is not type(None)]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return FieldCodec(name, "enum", hint, optional)
    if typing.get_origin(hint) in (list, dict):
        return FieldCodec(name, "json", hint, optional)
    if hasattr(hint, "from_dict"):
        return FieldCodec(name, "object", hint, optional)
    if hint in (int, float, str):
        return FieldCodec(name, "scalar", hint, optional)
    raise TypeError(f"field {name!r}: no JSON conversion for {hint!r}")


_CODECS: dict[type, tuple[FieldCodec, ...]] = {}


def field_codecs(cls: type) -> tuple[FieldCodec, ...]:
    """The record's fields in declaration order (the SQLite column order)."""
    if cls not in _CODECS:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        _CODECS[cls] = tuple(_field_codec(f.name, hints[f.name]) for f in fields)
    return _CODECS[cls]


def is_structured(codec: FieldCodec) -> bool:
    """Whether the field is stored as JSON text in a single column."""
    return codec.shape in ("json", "object")


def to_json(record: Any) -> dict[str, Any]:
    """The record as a JSON-able dict keyed by field name."""
    return {c.name: c.encode(getattr(record, c.name)) for c in field_codecs(type(record))}


def from_json(cls: type[R], data: dict[str, Any]) -> R:
    """The record `to_json` produced; absent fields take their defaults."""
    return cls(**{c.name: c.decode(data[c.name]) for c in field_codecs(cls) if c.name in data})


def normalized(record: R) -> R:
    """A deep copy with every field as the stores return it (the JSON round trip)."""
    return from_json(type(record), to_json(record))
