"""Documents: validated all-or-nothing upserts (text embedded by the collection's model: one vector,
or every token for multi-vector collections), get, delete.

One validation path for both kinds of collection: each request document becomes an
`index.NewDocument` carrying what was given (a vector, or a token matrix), the collection checks
those before any text is embedded, and its kind decides what the text becomes.
"""

import json
from dataclasses import replace
from typing import Any

from index import Invalid, NewDocument, StoredDocument, check_metadata
from service import schemas
from service.async_collection import AsyncCollection
from service.engine import Engine
from service.ops.limits import check_count, check_texts, for_collection
from service.request_kinds import request_kind
from service.settings import Settings


async def upsert(engine: Engine, name: str, docs: list[schemas.DocumentIn]) -> schemas.UpsertResponse:
    if not docs:
        raise Invalid("documents must not be empty", code="empty_batch")
    # Embedded outside the write gate (encoding is the slow part), written inside it; if an upgrade
    # cut over meanwhile, `serving` embeds again for the model that serves now.
    return await engine.upgrades.serving(name, lambda collection: _upsert(engine, collection, docs))


async def _upsert(
    engine: Engine, collection: AsyncCollection, docs: list[schemas.DocumentIn]
) -> schemas.UpsertResponse:
    s = for_collection(engine.settings, collection)
    check_count(len(docs), s.max_batch_documents, "documents", "too_many_documents")
    check_texts(s, ((f"document {d.id[:80]!r}", d.text) for d in docs if d.text is not None))
    new = [to_document(s, collection, d) for d in docs]
    collection.check_documents(new)  # what was given, before any text is embedded
    field = request_kind(collection).content
    to_embed = [i for i, d in enumerate(new) if getattr(d, field) is None]
    truncated: list[str] = []
    if to_embed:
        texts = [docs[i].text or "" for i in to_embed]
        embedded = await engine.embedder.embed_for(collection.backend, texts, "document")
        for i, x in zip(to_embed, embedded):
            new[i] = replace(new[i], **{field: x})
        encoder = engine.embedder.of(collection.backend)
        assert encoder is not None  # embed_for raised otherwise
        truncated = [docs[i].id for i in to_embed if len(docs[i].text or "") > encoder.max_chars]
    result = await engine.upgrades.write(collection, new)
    engine.metrics.observe_stages(collection.name, "", result.timings)
    return schemas.UpsertResponse(upserted=len(result.ids), ids=result.ids, truncated=truncated or None)


def to_document(s: Settings, collection: AsyncCollection, d: schemas.DocumentIn) -> NewDocument:
    """The request document as an `index.NewDocument` with what it gave (its vector, or its token
    matrix; text is embedded later), after every check this request shape needs."""
    where = f"document {d.id[:80]!r}"
    if len(d.id) > s.max_id_length:
        raise Invalid(f"{where}: id longer than {s.max_id_length} characters", code="invalid_id")
    if d.text is not None and not d.text.strip():
        raise Invalid(f"{where}: text is empty", code="empty_text")
    given = request_kind(collection).given_document(collection, d, where)  # a vector or a token matrix
    if d.metadata:
        check_metadata(d.metadata, where)
        if _json_bytes(d.metadata) > s.max_metadata_bytes:
            raise Invalid(f"{where}: metadata exceeds {s.max_metadata_bytes} bytes", code="metadata_too_large")
    return NewDocument(id=d.id, text=d.text, metadata=d.metadata or {}, **given)


async def get(engine: Engine, name: str, doc_id: str, include_vector: bool) -> schemas.DocumentOut:
    doc = await engine.upgrades.serving(name, lambda collection: collection.get(doc_id))
    return _document_out(doc, include_vector)


async def page(engine: Engine, name: str, after: str | None, limit: int, include_vector: bool) -> schemas.DocumentPage:
    docs, cursor = await engine.upgrades.serving(name, lambda collection: collection.scroll(after, limit))
    return schemas.DocumentPage(documents=[_document_out(d, include_vector) for d in docs], next=cursor)


def _document_out(doc: StoredDocument, include_vector: bool) -> schemas.DocumentOut:
    if doc.tokens is not None:
        vectors = doc.tokens.tolist() if include_vector else None
        return schemas.DocumentOut(id=doc.id, text=doc.text, metadata=doc.metadata or {}, vectors=vectors)
    vector = doc.vector.tolist() if include_vector and doc.vector is not None else None
    return schemas.DocumentOut(id=doc.id, text=doc.text, metadata=doc.metadata or {}, vector=vector)


async def delete(engine: Engine, name: str, ids: list[str]) -> schemas.DeleteResponse:

    async def delete_ids(collection: AsyncCollection):
        limit = for_collection(engine.settings, collection).max_batch_documents
        check_count(len(ids), limit, "ids", "too_many_documents")
        return await engine.upgrades.delete(collection, ids)

    result = await engine.upgrades.serving(name, delete_ids)
    engine.metrics.observe_stages(name, "", result.timings)
    deleted = set(result.ids)
    return schemas.DeleteResponse(
        deleted=len(deleted), ids=result.ids, not_found=[i for i in dict.fromkeys(ids) if i not in deleted]
    )


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())
