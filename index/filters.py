"""Metadata: what may be stored, and filters (equality on top-level keys, ANDed together).

Metadata is a JSON object nested at most `MAX_METADATA_DEPTH` levels: deeper values would be
accepted by a JSON parser and then fail to serialise in every response that returns them.

A document matches `{key: value}` when its metadata has `key` equal to `value`, or a list at
`key` that contains `value`. Values are scalars; numbers compare numerically (1 == 1.0) and
booleans only equal booleans. Filters cross the storage seam as these plain values.
"""

import math
from dataclasses import dataclass
from typing import Any

from index.errors import Invalid

MAX_CONDITIONS = 32
MAX_KEY_LENGTH = 256
MAX_METADATA_DEPTH = 32  # the object itself is depth 1
# Integers a store can hold: SQLite's INTEGER (and Qdrant's, Milvus's int64). JSON allows any
# size, and Python parses any size; past these, a write or a filter would fail inside the store.
INT_RANGE = (-(1 << 63), (1 << 63) - 1)

# A scalar as the store's field table holds it: (kind, value). Kinds keep True apart from 1.
Field = tuple[str, Any]


def scalar_field(value: Any) -> Field | None:
    """The indexed form of a metadata scalar, or None for values that are not filterable."""
    if value is None:
        return ("z", 0)
    if isinstance(value, bool):
        return ("b", int(value))
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    return None


def outside_int_range(value: Any) -> bool:
    """An integer (not a boolean) no store can hold: outside `INT_RANGE`."""
    return isinstance(value, int) and not isinstance(value, bool) and not INT_RANGE[0] <= value <= INT_RANGE[1]


def check_metadata(metadata: Any, what: str = "metadata") -> None:
    """Reject metadata that is not an object, that nests objects and lists deeper than
    `MAX_METADATA_DEPTH`, or that holds an integer outside `INT_RANGE` (at any depth: every
    backend stores the whole object). Iterative: a hostile depth cannot exhaust the Python stack."""
    if not isinstance(metadata, dict):
        raise Invalid(f"{what}: metadata must be a JSON object", code="invalid_metadata")
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise Invalid(f"{what}: metadata nests deeper than {MAX_METADATA_DEPTH} levels", code="metadata_too_deep")
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            elif outside_int_range(child):
                raise Invalid(
                    f"{what}: metadata holds an integer outside the signed 64-bit range "
                    f"({INT_RANGE[0]}..{INT_RANGE[1]}); send it as a string or a float",
                    code="invalid_metadata",
                )


def metadata_fields(metadata: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """`(key, kind, value)` rows for the filterable values of one document's metadata.

    Top-level scalars give one row; a list gives one row per scalar element. Nested objects
    are stored with the document but are not filterable.
    """
    rows = []
    for key, value in metadata.items():
        items = value if isinstance(value, list) else [value]
        seen = set()
        for item in items:
            field = scalar_field(item)
            if field is not None and field not in seen:
                seen.add(field)
                rows.append((key, *field))
    return rows


@dataclass(frozen=True)
class Filter:
    """Metadata equality conditions, ANDed: `{key: value}` as data, validated once. A backend
    translates them (the embedded one into the labels its field table matches); they cross the
    collection seam as values, never as sets of internal labels."""

    equals: tuple[tuple[str, Any], ...]  # (key, value): value a string, number, boolean or null

    @classmethod
    def parse(cls, value: "Filter | dict[str, Any] | None") -> "Filter | None":
        """A validated filter from its JSON form (None or {} for none); Invalid names the problem."""
        if value is None or isinstance(value, Filter):
            return value or None
        if not isinstance(value, dict):
            raise Invalid("filter must be an object of {key: value} equality conditions", code="invalid_filter")
        if len(value) > MAX_CONDITIONS:
            raise Invalid(f"a filter may have at most {MAX_CONDITIONS} conditions", code="invalid_filter")
        for key, item in value.items():
            if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
                raise Invalid(f"filter keys must be 1–{MAX_KEY_LENGTH} characters", code="invalid_filter")
            if scalar_field(item) is None:
                raise Invalid(
                    f"filter value for {key!r} must be a string, number, boolean or null; got {type(item).__name__}",
                    code="invalid_filter",
                )
            if outside_int_range(item):  # no stored integer can equal it, and the store cannot bind it
                raise Invalid(
                    f"filter value for {key!r} is an integer outside the signed 64-bit range metadata holds",
                    code="invalid_filter",
                )
        return cls(tuple(value.items())) if value else None

    def __bool__(self) -> bool:
        return bool(self.equals)

    def conditions(self) -> list[tuple[str, str, Any]]:
        """`(key, kind, value)` rows as the store's field table holds them."""
        return [(key, *scalar_field(value)) for key, value in self.equals]  # type: ignore[misc]

    def to_json(self) -> dict[str, Any]:
        return dict(self.equals)


def parse_filter(filter: "Filter | dict[str, Any] | None") -> list[tuple[str, str, Any]]:
    """Validate a filter and return its `(key, kind, value)` conditions (ANDed)."""
    parsed = Filter.parse(filter)
    return parsed.conditions() if parsed else []
