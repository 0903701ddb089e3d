"""Documents: validated all-or-nothing upserts (text embedded by the collection's model: one vector,
or every token for multi-vector collections), get, delete."""

import json
from typing import Any

import numpy as np

from index import Collection, MultiVectorCollection, NewDocument
from index.errors import Invalid
from service import schemas
from service.engine import Engine
from service.ops.tokens import has_tokens, token_matrix
from service.settings import Settings


async def upsert(engine: Engine, name: str, docs: list[schemas.DocumentIn]) -> schemas.UpsertResponse:
    collection = engine.collection(name)
    check_documents(engine.settings, collection, docs)
    if isinstance(collection, MultiVectorCollection):
        return await _upsert_multivector(engine, collection, docs)
    to_embed = [i for i, d in enumerate(docs) if d.vector is None]
    vectors: list[Any] = [d.vector for d in docs]
    if to_embed:
        encoder = engine.encoder_for(collection)
        if encoder is None:
            raise Invalid(f"collection {name!r} has no model: send a vector with every document", code="vector_required")
        layers = collection.manifest.encoder.get("layers")
        X = await engine.encode(name, encoder, [docs[i].text for i in to_embed], "document", layers)
        for i, x in zip(to_embed, X):
            vectors[i] = x
    new = [NewDocument(id=d.id, vector=np.asarray(v, np.float32), text=d.text, metadata=d.metadata or {})
           for d, v in zip(docs, vectors)]
    result = await engine.run(collection.upsert, new)
    engine.metrics.observe_stages(name, "", result.timings)
    return schemas.UpsertResponse(upserted=len(result.ids), ids=result.ids)


async def _upsert_multivector(engine: Engine, collection: MultiVectorCollection,
                              docs: list[schemas.DocumentIn]) -> schemas.UpsertResponse:
    """Token matrices as given, or every token of the text embedded by the collection's model."""
    token_dim = collection.config.token_dim
    tokens: list[Any] = [token_matrix(d, token_dim, f"document {d.id[:80]!r}") for d in docs]
    to_embed = [i for i, t in enumerate(tokens) if t is None]
    if to_embed:
        encoder = engine.encoder_for(collection)
        if encoder is None:
            raise Invalid(f"collection {collection.name!r} has no model: send vectors (a token matrix) with every "
                          f"document", code="vector_required")
        layers = collection.manifest.encoder.get("layers")
        T = await engine.encode_tokens(collection.name, encoder, [docs[i].text for i in to_embed], "document", layers)
        for i, t in zip(to_embed, T):
            tokens[i] = t
    new = [NewDocument(id=d.id, vector=None, text=d.text, metadata=d.metadata or {}, tokens=t)
           for d, t in zip(docs, tokens)]
    result = await engine.run(collection.upsert, new)
    engine.metrics.observe_stages(collection.name, "", result.timings)
    return schemas.UpsertResponse(upserted=len(result.ids), ids=result.ids)


def check_documents(s: Settings, collection: Collection, docs: list[schemas.DocumentIn]) -> None:
    if not docs:
        raise Invalid("documents must not be empty", code="empty_batch")
    if len(docs) > s.max_batch_documents:
        raise Invalid(f"{len(docs)} documents in one request; the limit is {s.max_batch_documents}",
                      code="too_many_documents")
    for d in docs:
        where = f"document {d.id[:80]!r}"
        if len(d.id) > s.max_id_length:
            raise Invalid(f"{where}: id longer than {s.max_id_length} characters", code="invalid_id")
        if d.text is not None and not d.text.strip():
            raise Invalid(f"{where}: text is empty", code="empty_text")
        if isinstance(collection, MultiVectorCollection):
            if d.vector is not None:
                raise Invalid(f"{where}: collection {collection.name!r} holds multi-vector documents; send "
                              f"vectors (a token matrix) or text, not vector", code="multivector_collection")
            if d.text is None and not has_tokens(d):
                raise Invalid(f"{where}: give text, vectors (a token matrix), or both", code="missing_content")
        elif has_tokens(d):
            raise Invalid(f"{where}: collection {collection.name!r} holds one vector per document; vectors and "
                          f"vectors_b64 are for multi-vector collections", code="dense_collection")
        elif d.text is None and d.vector is None:
            raise Invalid(f"{where}: give text, vector, or both", code="missing_content")
        if d.vector is not None and len(d.vector) != collection.manifest.dim:
            raise Invalid(f"{where}: vector has {len(d.vector)} dimensions; collection {collection.name!r} "
                          f"expects {collection.manifest.dim}", code="wrong_dimension")
        if d.metadata and _json_bytes(d.metadata) > s.max_metadata_bytes:
            raise Invalid(f"{where}: metadata exceeds {s.max_metadata_bytes} bytes", code="metadata_too_large")


async def get(engine: Engine, name: str, doc_id: str, include_vector: bool) -> schemas.DocumentOut:
    collection = engine.collection(name)
    doc = await engine.run(collection.get, doc_id)
    if doc.tokens is not None:
        return schemas.DocumentOut(id=doc.id, text=doc.text, metadata=doc.metadata or {},
                                   vectors=doc.tokens.tolist() if include_vector else None)
    return schemas.DocumentOut(id=doc.id, text=doc.text, metadata=doc.metadata or {},
                               vector=doc.vector.tolist() if include_vector else None)


async def delete(engine: Engine, name: str, ids: list[str]) -> schemas.DeleteResponse:
    collection = engine.collection(name)
    if len(ids) > engine.settings.max_batch_documents:
        raise Invalid(f"{len(ids)} ids in one request; the limit is {engine.settings.max_batch_documents}",
                      code="too_many_documents")
    result = await engine.run(collection.delete, ids)
    engine.metrics.observe_stages(name, "", result.timings)
    deleted = set(result.ids)
    return schemas.DeleteResponse(deleted=len(deleted), ids=result.ids,
                                  not_found=[i for i in dict.fromkeys(ids) if i not in deleted])


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())
