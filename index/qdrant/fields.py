"""Metadata filters on Qdrant: the filter tokens of index.remote (one home for the rule) as a
keyword list in the payload, `fields`, with a keyword index; a filter `{key: value}` becomes one
keyword match per condition, ANDed."""

from index.filters import Filter
from index.remote import field_tokens, token

FIELDS = "fields"  # the payload key of the tokens (a keyword index in Qdrant)

__all__ = ["FIELDS", "field_tokens", "qdrant_filter", "token"]


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
