"""Request limits that need the settings, one home each. Every breach is a 422 naming the limit
and the setting that raises it; nothing is computed before the check.

- counts: documents (or ids, or inputs) per request, searches per batch, k;
- text: each text (document, query, embeddings input) at most `max_text_chars`, and all of a
  request's texts together at most `max_request_chars`;
- shortlists: one search re-ranks at most `max_candidates` (`k · rerank_factor`, or a
  multi-vector search's `candidates`), a batch at most `max_request_candidates` in all;
- responses: the text, metadata and vectors of a search response stay under `max_response_bytes`.
"""

from collections.abc import Iterable
from typing import Any

from index import Invalid
from service.settings import Settings

# The collection limits (`CollectionLimits`) that tighten a server setting of the same name.
_TIGHTENING = ("max_k", "max_batch_documents", "max_batch_queries", "max_text_chars", "max_metadata_bytes")


def for_collection(s: Settings, collection: Any) -> Settings:
    """The limits that apply to requests on `collection`: the server's, each tightened by the
    collection's own strict limit of the same name when it sets one (the lower wins)."""
    own = collection.manifest.limits
    tighter = {k: min(getattr(s, k), own[k]) for k in _TIGHTENING if k in own}
    return s.model_copy(update=tighter) if tighter else s


def check_ef(collection: Any, ef: int | None) -> None:
    limit = collection.manifest.limits.get("max_ef")
    if ef is not None and limit is not None and ef > limit:
        raise Invalid(f"ef={ef} exceeds collection {collection.name!r}'s limit of {limit}", code="ef_too_large")


def check_count(n: int, limit: int, what: str, code: str) -> None:
    """`what` is plural: "documents", "searches", "inputs", "ids"."""
    if n > limit:
        raise Invalid(f"{n} {what} in one request; the limit is {limit}", code=code)


def check_k(s: Settings, k: int) -> None:
    if k > s.max_k:
        raise Invalid(f"k={k} exceeds the limit of {s.max_k}", code="k_too_large")


def check_texts(s: Settings, texts: Iterable[tuple[str, str]]) -> None:
    """`texts`: `(where, text)` pairs of one request, e.g. `("document 'a1'", "...")`."""
    total = 0
    for where, text in texts:
        if len(text) > s.max_text_chars:
            raise Invalid(
                f"{where}: text has {len(text)} characters; the limit is {s.max_text_chars} (VECNEST_MAX_TEXT_CHARS)",
                code="text_too_long",
            )
        total += len(text)
    if total > s.max_request_chars:
        raise Invalid(
            f"the request carries {total} characters of text; the limit is {s.max_request_chars} "
            f"(VECNEST_MAX_REQUEST_CHARS): split it",
            code="request_too_large",
        )


def check_shortlists(s: Settings, shortlists: list[int]) -> None:
    """`shortlists`: the candidates each search of one request will re-rank."""
    for i, n in enumerate(shortlists):
        if n > s.max_candidates:
            where = f"search {i}" if len(shortlists) > 1 else "the search"
            raise Invalid(
                f"{where} would re-rank {n} candidates (k · rerank_factor, or candidates); the limit is "
                f"{s.max_candidates} (VECNEST_MAX_CANDIDATES)",
                code="too_many_candidates",
            )
    if sum(shortlists) > s.max_request_candidates:
        raise Invalid(
            f"the batch would re-rank {sum(shortlists)} candidates in all; the limit is "
            f"{s.max_request_candidates} (VECNEST_MAX_REQUEST_CANDIDATES): split it",
            code="too_many_candidates",
        )


class ResponseBudget:
    """Counts what a search response carries (stored text and metadata bytes, ~12 per vector
    float) as its matches are hydrated, and stops the request once it passes the limit."""

    def __init__(self, s: Settings):
        self.limit = s.max_response_bytes
        self.spent = 0

    def spend(self, nbytes: int) -> None:
        self.spent += nbytes
        if self.spent > self.limit:
            raise Invalid(
                f"the results would carry more than {self.limit} bytes of text, metadata and vectors "
                f"(VECNEST_MAX_RESPONSE_BYTES): ask for fewer results or include less",
                code="response_too_large",
            )
