"""`Engine`: the use cases behind the routes (create, upsert, search, embed, ...).

It owns the catalog, the encoder registry and the inference queue; routes stay thin. Model
calls go through the inference thread; index and store calls run in the thread pool so the
event loop never blocks; neither holds the other's locks.
"""

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from index import Catalog, Collection, CollectionOptions, HnswParams, Manifest, NewDocument, SearchResult
from index.errors import Invalid, NotFound, NotReady
from index.vectors import check_metric
from service import schemas
from service.encoders import Encoder, EncoderRegistry
from service.inference import EncodeStats, InferenceQueue
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.encoders = EncoderRegistry(settings)
        self.inference = InferenceQueue(settings.encode_queue_size, settings.encode_batch_size, self._on_encode_batch,
                                        settings.torch_threads)
        self.catalog: Catalog | None = None
        self._collection_encoders: dict[str, Encoder] = {}
        self._unavailable: dict[str, str] = {}
        self.ready = False
        metrics.watch_collections(self._collection_stats)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Open every collection, load their encoders and the default model, then go ready."""
        self.inference.start()
        try:
            self.catalog = await run_in_threadpool(self._open_catalog)
            try:
                await self._load_encoder(self.settings.default_model)
            except Invalid as exc:  # vector-only collections still work without it
                log.error("default model unavailable: %s", exc.message)
            for name in self.catalog.names():
                encoder_info = self.catalog.get(name).manifest.encoder
                if encoder_info is None:
                    continue
                try:
                    self._collection_encoders[name] = await self._load_encoder(encoder_info["model"], encoder_info["dim"])
                except Invalid as exc:
                    log.error("collection %s is unavailable: %s", name, exc.message)
                    self._unavailable[name] = exc.message
        except Exception:
            log.exception("start-up failed; vecnest stays not ready")
            raise
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready: %d collections", len(self.catalog.names()))

    def _open_catalog(self) -> Catalog:
        s = self.settings
        options = CollectionOptions(
            rebuild_deleted_fraction=s.rebuild_deleted_fraction, exact_filter_fraction=s.exact_filter_fraction,
            exact_filter_min=s.exact_filter_min, synchronous=s.sqlite_synchronous)
        catalog = Catalog(str(s.data_dir), options)
        catalog.open_all()
        return catalog

    async def stop(self) -> None:
        self.ready = False
        if self.catalog is not None:
            await run_in_threadpool(self._snapshot_and_close)
        self.inference.stop()

    def _snapshot_and_close(self) -> None:
        for name in self.catalog.names():
            try:
                self.catalog.get(name).snapshot()
            except Exception:
                log.exception("snapshot of %s failed at shutdown; the store replays it next start", name)
        self.catalog.close()

    def _require_ready(self) -> Catalog:
        if not self.ready or self.catalog is None:
            raise NotReady("vecnest is still loading collections; retry shortly")
        return self.catalog

    async def _load_encoder(self, model: str, expected_dim: int | None = None) -> Encoder:
        ref = self.encoders.resolve(model)
        encoder = await self.inference.call(lambda: self.encoders.load(ref))
        if expected_dim is not None and encoder.dim != expected_dim:
            raise Invalid(f"model {model!r} now produces {encoder.dim}-dim vectors but the collection holds "
                          f"{expected_dim}-dim ones; restore the model or recreate the collection", code="model_mismatch")
        return encoder

    # -- collections --------------------------------------------------------------------------
    async def create_collection(self, req: schemas.CollectionCreate) -> schemas.CollectionInfo:
        catalog = self._require_ready()
        check_metric(req.metric)
        encoder = None
        if req.model is not None or req.dim is None:
            encoder = await self._load_encoder(req.model or self.settings.default_model)
            if req.dim is not None and req.dim != encoder.dim:
                raise Invalid(f"dim {req.dim} does not match model {encoder.id!r} ({encoder.dim} dims)", code="wrong_dimension")
        s, h = self.settings, req.hnsw or schemas.HnswConfig()
        manifest = Manifest(
            name=req.name,
            dim=encoder.dim if encoder else req.dim,
            metric=req.metric,
            hnsw=HnswParams(m=h.m or s.hnsw_m, ef_construction=h.ef_construction or s.hnsw_ef_construction,
                            ef_search=h.ef_search or s.hnsw_ef_search),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            encoder={"model": encoder.id, "dim": encoder.dim} if encoder else None,
        )
        collection = await run_in_threadpool(catalog.create, manifest)
        if encoder is not None:
            self._collection_encoders[req.name] = encoder
        return self._info(collection)

    def list_collections(self) -> schemas.CollectionList:
        self._require_ready()
        return schemas.CollectionList(collections=[self._info(c) for c in self.collections()])

    def describe(self, name: str) -> schemas.CollectionInfo:
        return self._info(self._require_ready().get(name))

    async def drop_collection(self, name: str) -> None:
        await run_in_threadpool(self._require_ready().drop, name)
        self._collection_encoders.pop(name, None)
        self._unavailable.pop(name, None)

    def _info(self, collection: Collection) -> schemas.CollectionInfo:
        m, stats = collection.manifest, collection.stats()
        return schemas.CollectionInfo(
            name=m.name, model=m.encoder["model"] if m.encoder else None, dim=m.dim, metric=m.metric,
            hnsw={"m": m.hnsw.m, "ef_construction": m.hnsw.ef_construction, "ef_search": m.hnsw.ef_search},
            created_at=m.created_at, documents=stats["documents"],
            index={k: v for k, v in stats.items() if k != "documents"},
        )

    def _collection_stats(self) -> list[tuple[str, dict]]:
        return [(c.name, c.stats()) for c in self.collections()] if self.ready else []

    def _encoder_for(self, collection: Collection) -> Encoder | None:
        if collection.name in self._unavailable:
            raise NotReady(f"collection {collection.name!r} cannot encode text: {self._unavailable[collection.name]}",
                           code="encoder_unavailable")
        return self._collection_encoders.get(collection.name)

    async def _encode(self, collection: Collection, encoder: Encoder, texts: list[str], kind: str) -> np.ndarray:
        t0 = time.perf_counter()
        X = await self.inference.encode(encoder, texts, kind)
        self.metrics.stage_seconds.labels(collection.name, "encode").observe(time.perf_counter() - t0)
        return X

    # -- documents ----------------------------------------------------------------------------
    async def upsert(self, name: str, docs: list[schemas.DocumentIn]) -> schemas.UpsertResponse:
        collection = self._require_ready().get(name)
        self._check_documents(collection, docs)
        to_embed = [i for i, d in enumerate(docs) if d.vector is None]
        vectors: list[Any] = [d.vector for d in docs]
        if to_embed:
            encoder = self._encoder_for(collection)
            if encoder is None:
                raise Invalid(f"collection {name!r} has no model: send a vector with every document", code="vector_required")
            X = await self._encode(collection, encoder, [docs[i].text for i in to_embed], "document")
            for i, x in zip(to_embed, X):
                vectors[i] = x
        new = [NewDocument(id=d.id, vector=np.asarray(v, np.float32), text=d.text, metadata=d.metadata or {})
               for d, v in zip(docs, vectors)]
        result = await run_in_threadpool(collection.upsert, new)
        self.metrics.observe_stages(name, result.timings)
        return schemas.UpsertResponse(upserted=len(result.ids), ids=result.ids)

    def _check_documents(self, collection: Collection, docs: list[schemas.DocumentIn]) -> None:
        s = self.settings
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
            if d.text is None and d.vector is None:
                raise Invalid(f"{where}: give text, vector, or both", code="missing_content")
            if d.vector is not None and len(d.vector) != collection.manifest.dim:
                raise Invalid(f"{where}: vector has {len(d.vector)} dimensions; collection {collection.name!r} "
                              f"expects {collection.manifest.dim}", code="wrong_dimension")
            if d.metadata and _json_bytes(d.metadata) > s.max_metadata_bytes:
                raise Invalid(f"{where}: metadata exceeds {s.max_metadata_bytes} bytes", code="metadata_too_large")

    async def get_document(self, name: str, doc_id: str, include_vector: bool) -> schemas.DocumentOut:
        collection = self._require_ready().get(name)
        doc = await run_in_threadpool(collection.get, doc_id)
        return schemas.DocumentOut(id=doc.id, text=doc.text, metadata=doc.metadata or {},
                                   vector=doc.vector.tolist() if include_vector else None)

    async def delete_documents(self, name: str, ids: list[str]) -> schemas.DeleteResponse:
        collection = self._require_ready().get(name)
        if len(ids) > self.settings.max_batch_documents:
            raise Invalid(f"{len(ids)} ids in one request; the limit is {self.settings.max_batch_documents}",
                          code="too_many_documents")
        result = await run_in_threadpool(collection.delete, ids)
        self.metrics.observe_stages(name, result.timings)
        deleted = set(result.ids)
        return schemas.DeleteResponse(deleted=len(deleted), ids=result.ids,
                                      not_found=[i for i in dict.fromkeys(ids) if i not in deleted])

    # -- search -------------------------------------------------------------------------------
    async def search(self, name: str, requests: list[schemas.SearchRequest]) -> list[schemas.SearchResponse]:
        collection = self._require_ready().get(name)
        if len(requests) > self.settings.max_batch_queries:
            raise Invalid(f"{len(requests)} searches in one request; the limit is {self.settings.max_batch_queries}",
                          code="too_many_queries")
        for r in requests:
            self._check_search(collection, r)
        started = time.perf_counter()
        vectors = await self._query_vectors(collection, requests)
        responses = []
        for r, q in zip(requests, vectors):
            t0 = time.perf_counter()
            result: SearchResult = await run_in_threadpool(
                collection.search, q, r.k, ef=r.ef, filter=r.filter, exact=r.exact, include=r.include)
            self.metrics.observe_stages(name, result.timings)
            self.metrics.searches.labels(name, result.strategy).inc()
            hits = [schemas.SearchHit(id=m.id, score=m.score, text=m.text if "text" in r.include else None,
                                      metadata=m.metadata, vector=m.vector.tolist() if m.vector is not None else None)
                    for m in result.matches[0]]
            responses.append(schemas.SearchResponse(results=hits, took_ms=(time.perf_counter() - t0) * 1e3))
        if len(requests) == 1:  # a single search reports its whole time, encoding included
            responses[0].took_ms = (time.perf_counter() - started) * 1e3
        return responses

    def _check_search(self, collection: Collection, r: schemas.SearchRequest) -> None:
        if (r.query is None) == (r.vector is None):
            raise Invalid("give exactly one of query (text) or vector", code="missing_query")
        if r.query is not None and not r.query.strip():
            raise Invalid("query text is empty", code="empty_text")
        if r.k > self.settings.max_k:
            raise Invalid(f"k={r.k} exceeds the limit of {self.settings.max_k}", code="k_too_large")
        if r.vector is not None and len(r.vector) != collection.manifest.dim:
            raise Invalid(f"query vector has {len(r.vector)} dimensions; collection {collection.name!r} expects "
                          f"{collection.manifest.dim}", code="wrong_dimension")

    async def _query_vectors(self, collection: Collection, requests: list[schemas.SearchRequest]) -> list[np.ndarray]:
        texts = [r.query for r in requests if r.query is not None]
        encoded = iter(())
        if texts:
            encoder = self._encoder_for(collection)
            if encoder is None:
                raise Invalid(f"collection {collection.name!r} has no model: search with a vector", code="vector_required")
            encoded = iter(await self._encode(collection, encoder, texts, "query"))
        return [np.asarray(r.vector, np.float32) if r.vector is not None else next(encoded) for r in requests]

    # -- embeddings ---------------------------------------------------------------------------
    async def embed(self, req: schemas.EmbeddingsRequest) -> tuple[np.ndarray, str, int]:
        """`(vectors (n, d), model name, prompt tokens)` for the OpenAI-style endpoint."""
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        if not texts:
            raise Invalid("input must not be empty", code="empty_input")
        if len(texts) > self.settings.max_batch_documents:
            raise Invalid(f"{len(texts)} inputs in one request; the limit is {self.settings.max_batch_documents}",
                          code="too_many_inputs")
        if any(not t.strip() for t in texts):
            raise Invalid("input contains an empty string", code="empty_text")
        encoder = await self._load_encoder(req.model or self.settings.default_model)
        if req.dimensions is not None and req.dimensions > encoder.dim:
            raise Invalid(f"dimensions={req.dimensions} exceeds the model's {encoder.dim}", code="invalid_dimensions")
        t0 = time.perf_counter()
        X = await self.inference.encode(encoder, texts, "document")
        self.metrics.stage_seconds.labels("", "encode").observe(time.perf_counter() - t0)
        if req.dimensions is not None and req.dimensions < encoder.dim:
            X = X[:, : req.dimensions]
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        tokens = await self.inference.call(lambda: encoder.count_tokens(texts))
        return X.astype(np.float32), encoder.id, tokens

    # -- maintenance (called from the maintenance thread) -------------------------------------
    def collections(self) -> list[Collection]:
        catalog = self.catalog
        if catalog is None:
            return []
        out = []
        for name in catalog.names():
            try:
                out.append(catalog.get(name))
            except NotFound:  # dropped meanwhile
                continue
        return out

    def _on_encode_batch(self, stats: EncodeStats) -> None:
        m = self.metrics
        m.encode_batch_texts.labels(stats.model).observe(stats.texts)
        m.encode_batch_requests.labels(stats.model).observe(stats.requests)
        m.encoded_texts.labels(stats.model).inc(stats.texts)
        for wait in stats.queue_wait_s:
            m.stage_seconds.labels("", "queue_wait").observe(wait)
        m.encode_queue_depth.set(self.inference.depth)


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())
