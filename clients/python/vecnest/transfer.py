"""Bulk import and export through a `Client` (a server, or the engine in-process).

Import reads JSON Lines (one document per line: `id`, and `text`, `vector` or `vectors`, and
`metadata`) or a BEIR corpus (`corpus.jsonl`, or a folder holding it; lines with `_id`, `title`,
`text`, `metadata`: the text becomes "title text"); `.gz` files too. It writes in batches with a
progress bar (rate and ETA), and is resumable: after every acknowledged batch it records how
many lines are done (a small JSON file under `state_dir`, default ~/.cache/vecnest/imports, named
by the file and the collection), and a rerun skips them (an upsert by id is idempotent, so a
batch sent twice changes nothing). Export writes every live document as JSON
Lines in id order, vectors included unless asked not to: an import of an export gives back the
same collection.
"""

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from vecnest.client import Client
from vecnest.errors import NotFound


@dataclass(frozen=True)
class ImportResult:
    imported: int  # documents written by this run
    skipped: int  # lines a previous run had written already (resumed)
    total: int  # documents in the file


def _create(path: Path, gzipped: bool) -> IO[str]:
    return gzip.open(path, "wt", encoding="utf-8") if gzipped else open(path, "w", encoding="utf-8")


def _open(path: Path) -> IO[str]:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def source_file(path: str | os.PathLike) -> tuple[Path, str]:
    """`(the file to read, its layout: "jsonl" or "beir")`: a BEIR folder means its corpus."""
    p = Path(path)
    if p.is_dir():
        for name in ("corpus.jsonl", "corpus.jsonl.gz"):
            if (p / name).exists():
                return p / name, "beir"
        raise FileNotFoundError(f"{p}: a folder, but no corpus.jsonl(.gz) in it (BEIR layout)")
    if not p.exists():
        raise FileNotFoundError(p)
    return p, "beir" if p.name.startswith("corpus.jsonl") else "jsonl"


def document_of(line: dict[str, Any], layout: str) -> dict[str, Any]:
    if layout == "beir":
        doc: dict[str, Any] = {"id": str(line["_id"]), "text": f"{line.get('title', '')} {line['text']}".strip()}
        if line.get("metadata"):
            doc["metadata"] = line["metadata"]
        return doc
    return line


def _lines(path: Path, layout: str, skip: int) -> Iterator[dict[str, Any]]:
    with _open(path) as f:
        for number, line in enumerate(f, start=1):
            if number <= skip or not line.strip():
                continue
            try:
                yield document_of(json.loads(line), layout)
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path}:{number}: not a document: {exc}") from None


def inferred_config(path: str | os.PathLike) -> dict[str, Any]:
    """A collection configuration that fits the file's first document: the default model for
    text, or no model and the vector's dim (a token matrix's width) for vectors."""
    file, layout = source_file(path)
    first = next(_lines(file, layout, 0), None)
    if first is None:
        return {}
    if first.get("vectors"):
        return {"model": None, "multivector": {"token_dim": len(first["vectors"][0])}}
    return {"model": None, "dim": len(first["vector"])} if first.get("vector") is not None else {}


def _count(path: Path) -> int:
    with _open(path) as f:
        return sum(1 for line in f if line.strip())


def import_file(
    client: Client,
    path: str | os.PathLike,
    collection: str,
    *,
    batch_size: int = 256,
    create: dict[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
    state_dir: str | os.PathLike | None = None,
) -> ImportResult:
    """Upsert every document of `path` into `collection` (created with `create` as its
    configuration when it does not exist and `create` is given)."""
    file, layout = source_file(path)
    where = Path(state_dir) if state_dir is not None else Path.home() / ".cache" / "vecnest" / "imports"
    where.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(f"{file.resolve()}\x00{collection}".encode()).hexdigest()[:20]
    state_file = where / f"{digest}.json"
    stat = file.stat()
    key = {"collection": collection, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    done = 0
    if resume and state_file.exists():
        state = json.loads(state_file.read_text())
        if {k: state.get(k) for k in key} == key:
            done = int(state["lines"])
    try:
        client.get_collection(collection)
    except NotFound:
        if create is None:
            raise
        client.create_collection(collection, **create)
    total = _count(file)
    written, batch = 0, []
    with tqdm(total=total, initial=done, unit=" docs", desc=f"import {collection}", disable=not progress) as bar:

        def flush() -> None:
            nonlocal written, batch
            client.upsert(collection, batch, batch_size=len(batch))
            written += len(batch)
            bar.update(len(batch))
            state_file.write_text(json.dumps({**key, "lines": done + written}))
            batch = []

        for doc in _lines(file, layout, done):
            batch.append(doc)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    state_file.unlink(missing_ok=True)  # complete: a later import of this file starts over
    return ImportResult(imported=written, skipped=done, total=total)


def export_collection(
    client: Client,
    collection: str,
    path: str | os.PathLike,
    *,
    vectors: bool = True,
    page_size: int = 256,
    progress: bool = True,
) -> int:
    """Write every live document of `collection` to `path` (JSON Lines; gzip if it ends in
    .gz), in id order; returns how many. Written to a temporary file and renamed at the end, so
    `path` is never a partial export."""
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    total = client.get_collection(collection).documents
    n = 0
    with (
        _create(partial, gzipped=target.suffix == ".gz") as out,
        tqdm(total=total, unit=" docs", desc=f"export {collection}", disable=not progress) as bar,
    ):
        for doc in client.documents(collection, include_vector=vectors, page_size=page_size):
            out.write(json.dumps(doc.model_dump(exclude_none=True), separators=(",", ":")) + "\n")
            n += 1
            bar.update(1)
    os.replace(partial, target)
    return n
