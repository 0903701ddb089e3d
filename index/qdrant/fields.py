"""Metadata filters on Qdrant, with exactly the embedded backend's meaning.

Qdrant's own payload conditions differ from vecnest's filter rule in small ways that would
change answers: a key with a dot is a nested path there, an integer condition does not match a
float payload (1 vs 1.0), a float cannot be matched by value at all. So each document carries
its filterable fields as one keyword list, `fields`, built by the same function the embedded
store fills its field table with (`index.filters.metadata_fields`), one token per
`(key, kind, value)`; a filter `{key: value}` becomes one keyword match per condition, ANDed.
The rule keeps one home; the translation cannot drift from it.
"""

import json
import math
from typing import Any

from index.filters import Filter, metadata_fields

FIELDS = "fields"  # the payload key of the tokens (a keyword index in Qdrant)


def token(key: str, kind: str, value: Any) -> str:
    """One filterable field as a keyword: numbers in one canonical spelling (1 == 1.0)."""
    if kind == "n" and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return json.dumps([key, kind, value], separators=(",", ":"), ensure_ascii=False)


def field_tokens(metadata: dict[str, Any]) -> list[str]:
    """The tokens of one document's metadata (top-level scalars, and scalars inside lists)."""
    return [token(key, kind, value) for key, kind, value in metadata_fields(metadata)]


def qdrant_filter(filter: Filter | None):
    """The Qdrant filter for `filter` (None for none): every condition must hold."""
    from qdrant_client import models

    if not filter:
        return None
    return models.Filter(
        must=[
            models.FieldCondition(key=FIELDS, match=models.MatchValue(value=token(key, kind, value)))
            for key, kind, value in filter.conditions()
        ]
    )
