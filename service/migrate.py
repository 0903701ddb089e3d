"""`vecnest migrate NAME`: copy an embedded collection into a shared backend, resumably.

The source is a collection of a data directory no server holds (the catalog's lock says so);
the target is the Qdrant backend the `--to-url`/`--to-path` options (or `VECNEST_QDRANT_*`)
name, or the Milvus backend at `--to-milvus`. Documents are streamed in id order, `--batch` at
a time, with their stored vectors or token matrices (no model runs), text and metadata; the
target collection gets the source's manifest (model, dims, metric, HNSW settings, recall
policy, limits; a PCA rotation is fitted there again by the maintenance process). After every
batch the id reached is saved in `<data_dir>/.migrate/<name>.json`, so an interrupted run goes
on from there (upserts are idempotent: a batch copied twice is the same batch). Writes made to
the source after the copy started are not followed: migrate while the service is stopped, then
serve from the shared backend.
"""

import json
import os
import sys
import time
from typing import Any

from index import (
    Catalog,
    CollectionBackend,
    Invalid,
    NewDocument,
    NotFound,
    VecnestError,
    open_milvus_catalog,
    open_qdrant_catalog,
)


def migrate(
    name: str,
    data_dir: str,
    *,
    url: str | None = None,
    api_key: str | None = None,
    path: str | None = None,
    milvus_uri: str | None = None,
    batch: int = 256,
    out: Any = None,
) -> int:
    """Copy collection `name` to Qdrant (`url` or `path`) or Milvus (`milvus_uri`; `api_key` is
    its token); returns the number of documents the target holds. Progress goes to `out`
    (default: standard error)."""
    out = out or sys.stderr
    source_catalog = Catalog(data_dir)
    if milvus_uri is not None:
        backend, where = "Milvus", milvus_uri
        target_catalog = open_milvus_catalog(uri=milvus_uri, token=api_key)
    else:
        backend, where = "Qdrant", url or path
        target_catalog = open_qdrant_catalog(url=url, api_key=api_key, path=path)
    try:
        source_catalog.open_all()
        source = source_catalog.get(name)
        progress_file = os.path.join(data_dir, ".migrate", f"{name}.json")
        begun = _progress(progress_file, where)
        target, created = _target(target_catalog, source, backend, resuming=begun is not None)
        if begun is not None and created:
            print(
                f"{name}: the collection an earlier run began is gone from the {backend} backend; starting over",
                file=out,
            )
        cursor, copied = (None, 0) if created or begun is None else begun
        if cursor is None:  # from now on the target is this run's: a crash resumes into it
            _save(progress_file, {"target": where, "cursor": None, "copied": 0})
        total, start, since = len(source), time.perf_counter(), copied
        if cursor is not None:
            print(f"resuming after id {cursor!r} ({copied} documents copied before)", file=out)
        while True:
            docs, next_cursor = source.scroll(cursor, batch)
            if docs:
                target.upsert(
                    [
                        NewDocument(id=d.id, vector=d.vector, tokens=d.tokens, text=d.text, metadata=d.metadata or {})
                        for d in docs
                    ]
                )
                copied += len(docs)
                cursor = docs[-1].id
                _save(progress_file, {"target": where, "cursor": cursor, "copied": copied})
                rate = (copied - since) / max(time.perf_counter() - start, 1e-9)
                eta = (total - copied) / rate if rate > 0 else 0.0
                print(f"{name}: {copied}/{total} documents, {rate:.0f}/s, ETA {eta:.0f} s", file=out, flush=True)
            if next_cursor is None:
                break
        held = len(target)
        print(f"{name}: done, the {backend} backend holds {held} documents (the source {total})", file=out)
        if os.path.exists(progress_file):
            os.remove(progress_file)
        return held
    finally:
        source_catalog.close()
        target_catalog.close()


def _target(catalog: Any, source: CollectionBackend, backend: str, resuming: bool) -> tuple[CollectionBackend, bool]:
    """`(the target collection, whether it was created now)`: created from the source's
    manifest, or the one a run began (`resuming`). A collection of that name that no run
    began, and that holds documents, is refused: copying into it would overwrite its documents
    of the same ids (a collection migrated before and served from the backend since: its
    newer writes)."""
    m = source.manifest
    try:
        target = catalog.get(m.name)
    except NotFound:
        return catalog.create(m.replace(rotation=None, snapshot=None)), True
    if not resuming and len(target) > 0:
        raise Invalid(
            f"the {backend} backend already holds a collection {m.name!r} ({len(target)} documents) that no "
            f"migration from here began: copying would overwrite its documents of the same ids; drop it there "
            f"first if it is to be replaced",
            code="collection_exists",
        )
    t = target.manifest
    if (t.dim, t.metric, t.indexed_dims, t.encoder) != (m.dim, m.metric, m.indexed_dims, m.encoder):
        raise Invalid(
            f"the {backend} backend already has a collection {m.name!r} that differs from this one "
            f"(dim, metric, dims or model); drop it there or migrate under another name",
            code="collection_exists",
        )
    return target, False


def _progress(file: str, where: str | None) -> tuple[str | None, int] | None:
    """`(cursor, documents copied)` of the run to `where` that began and did not finish; None
    when none did."""
    try:
        with open(file) as f:
            saved = json.load(f)
    except FileNotFoundError:
        return None
    if saved.get("target") != where:
        return None  # a run to another backend: start over
    return saved.get("cursor"), int(saved.get("copied", 0))


def _save(file: str, progress: dict) -> None:
    os.makedirs(os.path.dirname(file), exist_ok=True)
    tmp = f"{file}.tmp"
    with open(tmp, "w") as f:
        json.dump(progress, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, file)


def migrate_command(args) -> int:
    try:
        migrate(
            args.collection,
            args.data_dir,
            url=args.to_url or (None if args.to_path else os.environ.get("VECNEST_QDRANT_URL")),
            api_key=args.api_key or os.environ.get("VECNEST_QDRANT_API_KEY"),
            path=args.to_path or (None if args.to_url else os.environ.get("VECNEST_QDRANT_PATH")),
            milvus_uri=args.to_milvus,
            batch=args.batch,
        )
        return 0
    except VecnestError as exc:
        print(f"vecnest: {exc.message}", file=sys.stderr)
        return 1
