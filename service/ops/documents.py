"""Documents: validated all-or-nothing upserts (text embedded by the collection's model: one vector,
or every token for multi-vector collections), get, delete."""

import json
from typing import Any

import numpy as np

from index import Collection, MultiVectorCollection, NewDocument
from index.errors import Conflict, Invalid, NotFound
from index.filters import check_metadata
from service import schemas
from service.engine import Engine
from service.ops.limits import check_texts
from service.ops.tokens import has_tokens, token_matrix
from service.settings import Settings


async def upsert(engine: Engine, name: str, docs: list[schemas.DocumentIn]) -> schemas.UpsertResponse:
    # Embed outside the write gate (encoding is the slow part); write inside it. If an upgrade
    # cut over meanwhile, the vectors belong to the retired model: embed again for the new one.
    for _ in range(3):
        collection = engine.collection(name)
        check_documents(engine.settings, collection, docs)
        if engine.upgrades.live(name) is not None and any(d.text is None for d in docs):
            raise Conflict(
                f"collection {name!r} is being upgraded to a new model: every document needs text so the "
                f"other model can embed it too",
                code="upgrade_in_progress",
            )
        if isinstance(collection, MultiVectorCollection):
            new, truncated = await _multivector_documents(engine, collection, docs)
        else:
            new, truncated = await _dense_documents(engine, collection, docs)
        async with engine.upgrades.write_gate(name):
            if engine.collection(name) is not collection:
                continue
            result = await engine.run(collection.upsert, new)
        engine.metrics.observe_stages(name, "", result.timings)
        return schemas.UpsertResponse(upserted=len(result.ids), ids=result.ids, truncated=truncated or None)
    raise Conflict(f"collection {name!r} changed model while this write was embedded; retry", code="retry")


def _cut(encoder, docs: list[schemas.DocumentIn], embedded: list[int]) -> list[str]:
    """Ids of the embedded documents whose text is longer than the model reads."""
    return [docs[i].id for i in embedded if len(docs[i].text) > encoder.max_chars]


async def _dense_documents(
    engine: Engine, collection: Collection, docs: list[schemas.DocumentIn]
) -> tuple[list[NewDocument], list[str]]:
    to_embed = [i for i, d in enumerate(docs) if d.vector is None]
    vectors: list[Any] = [d.vector for d in docs]
    truncated: list[str] = []
    if to_embed:
        encoder = engine.encoder_for(collection)
        if encoder is None:
            raise Invalid(
                f"collection {collection.name!r} has no model: send a vector with every document",
                code="vector_required",
            )
        layers = collection.manifest.encoder.get("layers")
        X = await engine.encode(collection.name, encoder, [docs[i].text for i in to_embed], "document", layers)
        for i, x in zip(to_embed, X):
            vectors[i] = x
        truncated = _cut(encoder, docs, to_embed)
    return [
        NewDocument(id=d.id, vector=np.asarray(v, np.float32), text=d.text, metadata=d.metadata or {})
        for d, v in zip(docs, vectors)
    ], truncated


async def _multivector_documents(
    engine: Engine, collection: MultiVectorCollection, docs: list[schemas.DocumentIn]
) -> tuple[list[NewDocument], list[str]]:
    """Token matrices as given, or every token of the text embedded by the collection's model."""
    token_dim = collection.config.token_dim
    tokens: list[Any] = [token_matrix(d, token_dim, f"document {d.id[:80]!r}") for d in docs]
    to_embed = [i for i, t in enumerate(tokens) if t is None]
    truncated: list[str] = []
    if to_embed:
        encoder = engine.encoder_for(collection)
        if encoder is None:
            raise Invalid(
                f"collection {collection.name!r} has no model: send vectors (a token matrix) with every document",
                code="vector_required",
            )
        layers = collection.manifest.encoder.get("layers")
        T = await engine.encode_tokens(collection.name, encoder, [docs[i].text for i in to_embed], "document", layers)
        for i, t in zip(to_embed, T):
            tokens[i] = t
        truncated = _cut(encoder, docs, to_embed)
    return [
        NewDocument(id=d.id, vector=None, text=d.text, metadata=d.metadata or {}, tokens=t)
        for d, t in zip(docs, tokens)
    ], truncated


def check_documents(s: Settings, collection: Collection, docs: list[schemas.DocumentIn]) -> None:
    if not docs:
        raise Invalid("documents must not be empty", code="empty_batch")
    if len(docs) > s.max_batch_documents:
        raise Invalid(
            f"{len(docs)} documents in one request; the limit is {s.max_batch_documents}", code="too_many_documents"
        )
    check_texts(s, ((f"document {d.id[:80]!r}", d.text) for d in docs if d.text is not None))
    for d in docs:
        where = f"document {d.id[:80]!r}"
        if len(d.id) > s.max_id_length:
            raise Invalid(f"{where}: id longer than {s.max_id_length} characters", code="invalid_id")
        if d.text is not None and not d.text.strip():
            raise Invalid(f"{where}: text is empty", code="empty_text")
        if isinstance(collection, MultiVectorCollection):
            if d.vector is not None:
                raise Invalid(
                    f"{where}: collection {collection.name!r} holds multi-vector documents; send "
                    f"vectors (a token matrix) or text, not vector",
                    code="multivector_collection",
                )
            if d.text is None and not has_tokens(d):
                raise Invalid(f"{where}: give text, vectors (a token matrix), or both", code="missing_content")
        elif has_tokens(d):
            raise Invalid(
                f"{where}: collection {collection.name!r} holds one vector per document; vectors and "
                f"vectors_b64 are for multi-vector collections",
                code="dense_collection",
            )
        elif d.text is None and d.vector is None:
            raise Invalid(f"{where}: give text, vector, or both", code="missing_content")
        if d.vector is not None and len(d.vector) != collection.manifest.dim:
            raise Invalid(
                f"{where}: vector has {len(d.vector)} dimensions; collection {collection.name!r} "
                f"expects {collection.manifest.dim}",
                code="wrong_dimension",
            )
        if d.metadata:
            check_metadata(d.metadata, where)
        if d.metadata and _json_bytes(d.metadata) > s.max_metadata_bytes:
            raise Invalid(f"{where}: metadata exceeds {s.max_metadata_bytes} bytes", code="metadata_too_large")


async def get(engine: Engine, name: str, doc_id: str, include_vector: bool) -> schemas.DocumentOut:
    collection = engine.collection(name)
    try:
        doc = await engine.run(collection.get, doc_id)
    except NotFound as exc:
        if exc.code != "collection_not_found" or engine.collection(name) is collection:
            raise
        doc = await engine.run(engine.collection(name).get, doc_id)  # an upgrade retired that generation
    if doc.tokens is not None:
        return schemas.DocumentOut(
            id=doc.id,
            text=doc.text,
            metadata=doc.metadata or {},
            vectors=doc.tokens.tolist() if include_vector else None,
        )
    return schemas.DocumentOut(
        id=doc.id, text=doc.text, metadata=doc.metadata or {}, vector=doc.vector.tolist() if include_vector else None
    )


async def delete(engine: Engine, name: str, ids: list[str]) -> schemas.DeleteResponse:
    engine.collection(name)
    if len(ids) > engine.settings.max_batch_documents:
        raise Invalid(
            f"{len(ids)} ids in one request; the limit is {engine.settings.max_batch_documents}",
            code="too_many_documents",
        )
    async with engine.upgrades.write_gate(name):
        result = await engine.run(engine.collection(name).delete, ids)
    engine.metrics.observe_stages(name, "", result.timings)
    deleted = set(result.ids)
    return schemas.DeleteResponse(
        deleted=len(deleted), ids=result.ids, not_found=[i for i in dict.fromkeys(ids) if i not in deleted]
    )


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())
