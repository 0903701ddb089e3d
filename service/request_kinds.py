"""What requests carry for each kind of collection: the one place `service/` tells a dense
collection from a multi-vector one.

The index decides what a document and a query *are* (its scoring strategy); the HTTP API decides
how they are *spelled*: a dense collection takes `vector` (one row), a multi-vector collection
`vectors` or `vectors_b64` (a token matrix). `request_kind(collection)` returns the spelling of a
collection's kind; the use cases call it instead of asking which kind they hold.
"""

import base64
import binascii
from typing import Any, Protocol

import numpy as np

from index import Invalid, Manifest
from service import schemas


class Described(Protocol):
    """What reading a request needs of a collection (a backend, or its `AsyncCollection`)."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def manifest(self) -> Manifest: ...
    @property
    def dims(self) -> list[int]: ...


class RequestKind(Protocol):
    """How one kind of collection reads request bodies.

    `content` is the `NewDocument` field a model fills from text ("vector" or "tokens");
    `alternative` names what a caller sends instead of text, for error messages."""

    content: str
    alternative: str
    embeds_tokens: bool  # the model embeds every token (a matrix per text), not one vector
    max_probe_queries: int | None  # how many queries a recall probe may use (None: no own limit)

    def given_query(self, collection: Described, r: schemas.SearchRequest) -> Any: ...
    def given_document(self, collection: Described, d: schemas.DocumentIn, where: str) -> dict[str, Any]: ...
    def one(self, x: Any) -> Any: ...
    def stack(self, parts: list[Any]) -> Any: ...
    def includable(self, include: list[str]) -> tuple[str, ...]: ...
    def probe_dims(self, collection: Described, dim: int | None) -> list[int | None]: ...


class DenseRequests:
    content = "vector"
    alternative = "a vector"
    embeds_tokens = False
    max_probe_queries = None

    def given_query(self, collection: Described, r: schemas.SearchRequest) -> list[float] | None:
        """The request's vector, or None; token fields are refused."""
        wrong = [f for f in ("vectors", "vectors_b64") if getattr(r, f) is not None]
        if wrong:
            raise Invalid(
                f"collection {collection.name!r} holds one vector per document; {', '.join(wrong)} are for "
                f"multi-vector collections",
                code="dense_collection",
            )
        return r.vector

    def given_document(self, collection: Described, d: schemas.DocumentIn, where: str) -> dict[str, Any]:
        if d.vectors is not None or d.vectors_b64 is not None:
            raise Invalid(
                f"{where}: collection {collection.name!r} holds one vector per document; vectors and vectors_b64 "
                f"are for multi-vector collections",
                code="dense_collection",
            )
        if d.text is None and d.vector is None:
            raise Invalid(f"{where}: give text, vector, or both", code="missing_content")
        return {"vector": None if d.vector is None else np.asarray(d.vector, np.float32)}

    def one(self, x: Any) -> np.ndarray:
        """One query's vector `(D,)` as `Query.queries`: `(1, D)`."""
        return np.asarray(x)[None, :]

    def stack(self, parts: list[Any]) -> np.ndarray:
        """Several requests' `(n_i, D)` queries as one `(Σn_i, D)` search."""
        return np.concatenate(parts)

    def includable(self, include: list[str]) -> tuple[str, ...]:
        return tuple(include)

    def probe_dims(self, collection: Described, dim: int | None) -> list[int | None]:
        """The graphs a recall probe measures: the one asked for, or every Matryoshka dim."""
        return [dim] if dim is not None else list(collection.dims)


class TokenRequests:
    content = "tokens"
    alternative = "vectors (a token matrix)"
    embeds_tokens = True
    # A probe scores every document by brute-force MaxSim per query: ~0.4 s over 50k short documents.
    max_probe_queries = 200

    def given_query(self, collection: Described, r: schemas.SearchRequest) -> np.ndarray | list | None:
        """The request's token matrix, or None; `vector` is refused."""
        if r.vector is not None:
            raise Invalid(
                f"vector applies to dense collections; search collection {collection.name!r} with query "
                f"(text) or vectors (a token matrix)",
                code="multivector_collection",
            )
        return token_matrix(r, _token_dim(collection), "query")

    def given_document(self, collection: Described, d: schemas.DocumentIn, where: str) -> dict[str, Any]:
        if d.vector is not None:
            raise Invalid(
                f"{where}: collection {collection.name!r} holds multi-vector documents; send vectors (a token "
                f"matrix) or text, not vector",
                code="multivector_collection",
            )
        tokens = token_matrix(d, _token_dim(collection), where)
        if d.text is None and tokens is None:
            raise Invalid(f"{where}: give text, vectors (a token matrix), or both", code="missing_content")
        return {"vector": None, "tokens": tokens}

    def one(self, x: Any) -> list[Any]:
        """One query's token matrix `(m, token_dim)` as `Query.queries`: a list of one."""
        return [x]

    def stack(self, parts: list[Any]) -> list[Any]:
        return [matrix for part in parts for matrix in part]

    def includable(self, include: list[str]) -> tuple[str, ...]:
        # A multi-vector match carries no single vector; its tokens are read with GET.
        return tuple(i for i in include if i != "vector")

    def probe_dims(self, collection: Described, dim: int | None) -> list[int | None]:
        """The one FDE graph, which has no dim to pick (`check` refuses one that is given)."""
        return [dim]


_KINDS: dict[str, RequestKind] = {"dense": DenseRequests(), "multivector": TokenRequests()}


def request_kind(collection: Described) -> RequestKind:
    return _KINDS[collection.kind]


def token_matrix(body: schemas.TokensIn, token_dim: int, what: str) -> np.ndarray | list | None:
    """The request's token matrix: `(n, token_dim)` from base64, the JSON rows as given (the
    collection validates shape and values), or None when it has neither."""
    if body.vectors is not None and body.vectors_b64 is not None:
        raise Invalid(f"{what}: give vectors or vectors_b64, not both", code="invalid_tokens")
    if body.vectors_b64 is None:
        return body.vectors
    try:
        raw = base64.b64decode(body.vectors_b64, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"{what}: vectors_b64 is not valid base64", code="invalid_tokens") from None
    dtype = np.dtype("<f4" if body.dtype == "float32" else "<f2")
    row = dtype.itemsize * token_dim
    if not raw or len(raw) % row:
        raise Invalid(
            f"{what}: vectors_b64 holds {len(raw)} bytes, not a whole number of {token_dim}-dim "
            f"{body.dtype} tokens ({row} bytes each)",
            code="wrong_dimension",
        )
    return np.frombuffer(raw, dtype).reshape(-1, token_dim).astype(np.float32)


def _token_dim(collection: Described) -> int:
    config = collection.manifest.multivector
    assert config is not None  # a multi-vector collection's manifest always has one
    return config.token_dim
