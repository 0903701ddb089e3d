"""`Store`: one SQLite file (WAL mode) per collection, the source of truth.

Every write transaction takes the next `seq`; each document row remembers the `seq` of its
last write, and deletes leave a tombstone row so that `changes_since(seq)` can replay both
upserts and deletes onto an older index snapshot. Labels (int64) are internal row ids and
never leave `index/`; callers see their own string ids. An upsert of an existing id keeps its
label; a new id takes a label freed by a purged tombstone before a new one, so labels (and the
vector file and graphs sized by them) grow with the documents, not with the writes.

A full disk (SQLITE_FULL) rolls the transaction back and raises `InsufficientStorage`; a
read-only store raises `ReadOnly`. Either way nothing of the write is left behind.
"""

import errno
import json
import sqlite3
import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from index.errors import InsufficientStorage, Invalid, NotReady, ReadOnly
from index.files import near_fd_limit
from index.filters import check_metadata, metadata_fields

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    label    INTEGER PRIMARY KEY AUTOINCREMENT,  -- reused only once its tombstone is purged (free_labels)
    id       TEXT NOT NULL UNIQUE,
    seq      INTEGER NOT NULL,                   -- seq of the last write to this row
    deleted  INTEGER NOT NULL DEFAULT 0,         -- 1: tombstone, kept until a rebuild purges it
    text     TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',         -- a JSON object
    vector   BLOB                                -- float32 little-endian (dim,); NULL for tombstones
);
CREATE INDEX IF NOT EXISTS documents_seq ON documents (seq);
CREATE TABLE IF NOT EXISTS fields (              -- filterable metadata values, one row each
    label INTEGER NOT NULL,
    key   TEXT NOT NULL,
    kind  TEXT NOT NULL,                         -- s(tring) n(umber) b(oolean) z(null)
    value
);
CREATE INDEX IF NOT EXISTS fields_lookup ON fields (key, kind, value, label);
CREATE INDEX IF NOT EXISTS fields_label ON fields (label);
CREATE TABLE IF NOT EXISTS free_labels (label INTEGER PRIMARY KEY);  -- labels of purged tombstones
"""
# Multi-vector collections keep each document's token matrix, the source of truth its FDE
# (in `documents.vector`) is derived from.
_TOKEN_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    label INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    blob  BLOB NOT NULL                          -- float16 little-endian (count, token_dim)
);
"""
# The keyword index: BM25 over the documents' text (FTS5, an external-content table over
# `documents`, so the text is stored once). Triggers keep it in the same transaction as the row
# it indexes; it holds live documents only (a tombstone's text is NULL). The Porter stemmer over
# unicode61 words is the usual English analysis of BM25 baselines.
_KEYWORD_SCHEMA = """
CREATE VIRTUAL TABLE keywords USING fts5(
    text, content = 'documents', content_rowid = 'label', tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER keywords_insert AFTER INSERT ON documents WHEN new.text IS NOT NULL BEGIN
    INSERT INTO keywords (rowid, text) VALUES (new.label, new.text);
END;
CREATE TRIGGER keywords_delete AFTER DELETE ON documents WHEN old.text IS NOT NULL BEGIN
    INSERT INTO keywords (keywords, rowid, text) VALUES ('delete', old.label, old.text);
END;
CREATE TRIGGER keywords_update AFTER UPDATE OF text ON documents BEGIN
    INSERT INTO keywords (keywords, rowid, text) SELECT 'delete', old.label, old.text WHERE old.text IS NOT NULL;
    INSERT INTO keywords (rowid, text) SELECT new.label, new.text WHERE new.text IS NOT NULL;
END;
"""
_SQL_VARS = 30000  # SQLite's limit on bound parameters per statement is 32766
MAX_READERS = 8  # read connections per store (each holds 3 file descriptors); more readers wait
_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_IOERR = 13, 8, 10


@dataclass(frozen=True)
class NewDocument:
    """A document to write: `vector` is `(dim,)` float32, already prepared for the metric;
    `tokens` is the `(n, token_dim)` float16 token matrix of a multi-vector document."""

    id: str
    vector: np.ndarray | None  # None only while a document's text is still to be embedded
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tokens: np.ndarray | None = None


@dataclass(frozen=True)
class StoredDocument:
    label: int
    id: str
    vector: np.ndarray | None  # None when not asked for
    text: str | None = None
    metadata: dict[str, Any] | None = None
    tokens: np.ndarray | None = None  # (n, token_dim) float16, multi-vector documents
    nbytes: int = 0  # length of the text and metadata JSON read with it (0 when not asked for)


@dataclass(frozen=True)
class Changes:
    """One chunk of `changes_since`: rows to (re)add and labels to delete."""

    labels: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, dim) float32
    deleted: np.ndarray  # (m,) int64


@contextmanager
def storage_errors() -> Iterator[None]:
    """Turn SQLite's "disk full" and "read-only" into the errors the service maps to 507 and 503."""
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if code is not None else None
        if primary == _SQLITE_FULL or (primary == _SQLITE_IOERR and "full" in str(exc)):
            raise InsufficientStorage(
                "the disk holding the data directory is full: nothing was written; free space and retry"
            ) from exc
        if primary == _SQLITE_READONLY:
            raise ReadOnly("the data directory is read-only: nothing was written") from exc
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage(
                "the disk holding the data directory is full: nothing was written; free space and retry"
            ) from exc
        if exc.errno == errno.EROFS:
            raise ReadOnly("the data directory is read-only: nothing was written") from exc
        raise


def check_archived_store(path: str, dim: int, token_dim: int | None, documents: int) -> None:
    """Invalid unless the SQLite file at `path` holds what an archive of `documents` live
    documents must: that many live rows, each with a JSON object as metadata and a `dim`-float32
    vector, (multi-vector) token matrices of `token_dim` float16 columns, and no label beyond
    those it assigned. An archive's files
    pass their checksums, yet it may come from anywhere, and a bad row would otherwise fail
    every read that meets it (as a 500) long after the restore was acknowledged."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        live, bad_metadata, bad_vectors = conn.execute(
            "SELECT count(*),"
            " coalesce(sum(CASE WHEN json_valid(metadata) THEN json_type(metadata) END IS NOT 'object'), 0),"
            " coalesce(sum(vector IS NULL OR length(vector) != ?), 0)"
            " FROM documents WHERE deleted = 0",
            (4 * dim,),
        ).fetchone()
        # Every label the store ever assigned (1..its sequence) is a row's or a free one, and the
        # vector file is sized by the sequence: a larger one would make the restore allocate
        # (for real) a file of that many rows.
        (sequence,) = conn.execute(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'documents'), 0)"
        ).fetchone()
        (labels,) = conn.execute(
            "SELECT (SELECT count(*) FROM documents) + (SELECT count(*) FROM free_labels)"
        ).fetchone()
        (top,) = conn.execute("SELECT coalesce(max(label), 0) FROM documents").fetchone()
        bad_tokens = 0
        if token_dim:
            (bad_tokens,) = conn.execute(
                "SELECT count(*) FROM documents LEFT JOIN tokens USING (label)"
                " WHERE deleted = 0 AND (blob IS NULL OR count < 1 OR length(blob) != count * ? * 2)",
                (token_dim,),
            ).fetchone()
    except sqlite3.Error as exc:
        raise Invalid(f"the store cannot be read as a collection's: {exc}", code="invalid_archive") from None
    finally:
        conn.close()
    problems = [
        f"{live} live documents where the archive says {documents}" if live != documents else "",
        f"{bad_metadata} documents whose metadata is not a JSON object" if bad_metadata else "",
        f"{bad_vectors} documents without a {dim}-dim float32 vector" if bad_vectors else "",
        f"{bad_tokens} documents without a token matrix of {token_dim} columns" if bad_tokens else "",
        f"labels up to {max(sequence, top)} where {labels} were assigned" if max(sequence, top) > labels else "",
    ]
    if any(problems):
        raise Invalid(f"the store holds {'; '.join(p for p in problems if p)}", code="invalid_archive")


class Store:
    def __init__(
        self,
        path: str,
        dim: int,
        synchronous: str = "FULL",
        token_dim: int | None = None,
        mmap_bytes: int = 0,
    ):
        """`mmap_bytes`: how much of the file each connection maps (reads without a syscall per
        page); bounded (0: none), because every pooled connection maps the file again and the
        resident set counts the pages it touched once per mapping."""
        self.path = path
        self._mmap_bytes = int(mmap_bytes)
        self.dim = int(dim)
        self.token_dim = token_dim  # set: every document carries a token matrix
        self._synchronous = synchronous
        with storage_errors():
            self._writer = self._connect()
            try:
                self._writer.executescript(_SCHEMA + (_TOKEN_SCHEMA if token_dim else ""))
                self._add_keyword_index()
            except BaseException:
                self._writer.close()
                raise
        self._write_lock = threading.Lock()
        self._readers: list[sqlite3.Connection | None] = []  # None: a slot being connected
        self._idle_readers: list[sqlite3.Connection] = []
        self._pool = threading.Condition(threading.Lock())
        self._closed = False

    def _add_keyword_index(self) -> None:
        """Create the keyword index, and fill it from the live documents' text: a store written
        before it existed gets one when first opened (one transaction: all of it, or none)."""
        conn = self._writer
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'keywords'").fetchone():
            return
        try:
            conn.executescript(
                "BEGIN IMMEDIATE;" + _KEYWORD_SCHEMA + "INSERT INTO keywords (rowid, text) "
                "SELECT label, text FROM documents WHERE text IS NOT NULL; COMMIT;"
            )
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; connections move between
        # threads (one at a time), which SQLite in serialized mode allows.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute(f"PRAGMA mmap_size={self._mmap_bytes}")
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._pool:
            while not self._closed and not self._idle_readers and len(self._readers) >= MAX_READERS:
                self._pool.wait()
            if self._closed:
                raise sqlite3.ProgrammingError("the store is closed")
            conn = self._idle_readers.pop() if self._idle_readers else None
            if conn is None:
                self._readers.append(None)  # a slot, filled below outside the lock
        if conn is None:
            try:
                conn = self._connect()
            except BaseException as exc:
                with self._pool:
                    self._readers.remove(None)
                    self._pool.notify()
                if isinstance(exc, sqlite3.OperationalError) and near_fd_limit():
                    raise NotReady(
                        "the server is out of file descriptors; retry shortly, or raise its limit (ulimit -n)",
                        code="too_many_open_files",
                    ) from exc
                raise
            with self._pool:
                if self._closed:  # closed while this connection was being opened
                    conn.close()
                    self._readers.remove(None)
                    self._pool.notify_all()
                    raise sqlite3.ProgrammingError("the store is closed")
                self._readers[self._readers.index(None)] = conn
        try:
            yield conn
        finally:
            with self._pool:
                if self._closed:  # closed while this read ran: `close` waits for this
                    conn.close()
                    self._readers.remove(conn)
                    self._pool.notify_all()
                else:
                    self._idle_readers.append(conn)
                self._pool.notify()

    @contextmanager
    def _read_as_of_one_commit(self) -> Iterator[sqlite3.Connection]:
        """`_read` in one read transaction: every SELECT inside sees the same commit. (On these
        autocommit connections each statement takes its own snapshot, so a write committed
        between two SELECTs shows in the second only.)"""
        with self._read() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")  # ends the read; it wrote nothing

    def close(self) -> None:
        """Close every connection, after the reads in flight end. None may outlive this call:
        SQLite's last connection to close deletes the `-wal` and `-shm` files by name, and once
        this returns the path may hold another store (a restore, or a drop and a create of the
        same name) whose files those names now are: its reads then fail ("disk I/O error"), and
        its writes not yet checkpointed are gone at the next start."""
        with self._write_lock, self._pool:
            self._closed = True
            for conn in self._idle_readers:
                conn.close()
                self._readers.remove(conn)
            self._idle_readers.clear()
            self._pool.notify_all()
            while self._readers:  # reads in flight (or connecting): each closes its own at its end
                self._pool.wait()
            self._writer.close()

    # -- writes (one transaction each; the caller serialises writers) -------------------------
    def put(self, docs: Sequence[NewDocument]) -> tuple[int, np.ndarray]:
        """Upsert `docs` in one transaction. Returns `(seq, labels (n,) int64)`."""
        rows = []
        for doc in docs:
            vector = np.ascontiguousarray(doc.vector, "<f4")
            if vector.shape != (self.dim,):
                raise Invalid(f"document {doc.id!r}: vector shape {vector.shape}, expected ({self.dim},)")
            check_metadata(doc.metadata or {}, f"document {doc.id!r}")
            try:
                metadata = json.dumps(doc.metadata or {}, allow_nan=False, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                raise Invalid(
                    f"document {doc.id!r}: metadata is not plain JSON: {exc}", code="invalid_metadata"
                ) from None
            rows.append((doc, metadata, vector.tobytes(), self._token_blob(doc)))
        with self._write_lock, self._transaction() as conn:
            seq = self._next_seq(conn)
            existing = dict(
                self._select_in(conn, "SELECT id, label FROM documents WHERE id IN ({})", [doc.id for doc in docs])
            )
            free = iter(self._take_free_labels(conn, sum(doc.id not in existing for doc in docs)))
            labels = []
            for doc, metadata, blob, tokens in rows:
                label = existing.get(doc.id)
                if label is not None:
                    conn.execute(
                        "UPDATE documents SET seq = ?, deleted = 0, text = ?, metadata = ?, vector = ? WHERE label = ?",
                        (seq, doc.text, metadata, blob, label),
                    )
                else:  # a freed label when there is one; NULL lets AUTOINCREMENT pick a new one
                    (label,) = conn.execute(
                        "INSERT INTO documents (label, id, seq, deleted, text, metadata, vector) "
                        "VALUES (?, ?, ?, 0, ?, ?, ?) RETURNING label",
                        (next(free, None), doc.id, seq, doc.text, metadata, blob),
                    ).fetchone()
                labels.append(label)
                if tokens is not None:
                    conn.execute(
                        "INSERT OR REPLACE INTO tokens (label, count, blob) VALUES (?, ?, ?)", (label, *tokens)
                    )
                conn.execute("DELETE FROM fields WHERE label = ?", (label,))
                conn.executemany(
                    "INSERT INTO fields (label, key, kind, value) VALUES (?, ?, ?, ?)",
                    [(label, *row) for row in metadata_fields(doc.metadata or {})],
                )
        return seq, np.asarray(labels, np.int64)

    @staticmethod
    def _take_free_labels(conn: sqlite3.Connection, n: int) -> list[int]:
        if n == 0:
            return []
        free = [r[0] for r in conn.execute("SELECT label FROM free_labels ORDER BY label LIMIT ?", (n,))]
        conn.executemany("DELETE FROM free_labels WHERE label = ?", [(label,) for label in free])
        return free

    def label_ceiling(self, new: int) -> int:
        """A bound every label of the next write of `new` documents stays below: the largest
        label ever assigned plus `new` (freed labels are smaller still). Call under the
        collection's write mutex, which orders every write."""
        with self._write_lock:
            row = self._writer.execute("SELECT seq FROM sqlite_sequence WHERE name = 'documents'").fetchone()
        return (row[0] if row else 0) + new + 1

    def delete(self, ids: Sequence[str]) -> tuple[int, np.ndarray, list[str]]:
        """Tombstone the live documents among `ids`. Returns `(seq, labels, deleted ids)`."""
        with self._write_lock, self._transaction() as conn:
            found = self._select_in(conn, "SELECT label, id FROM documents WHERE deleted = 0 AND id IN ({})", ids)
            if not found:
                return self._last_seq(conn), np.zeros(0, np.int64), []
            seq = self._next_seq(conn)
            labels = [label for label, _ in found]
            conn.executemany(
                "UPDATE documents SET deleted = 1, seq = ?, text = NULL, metadata = '{}', vector = NULL "
                "WHERE label = ?",
                [(seq, label) for label in labels],
            )
            conn.executemany("DELETE FROM fields WHERE label = ?", [(label,) for label in labels])
            if self.token_dim:
                conn.executemany("DELETE FROM tokens WHERE label = ?", [(label,) for label in labels])
        return seq, np.asarray(labels, np.int64), [doc_id for _, doc_id in found]

    def purge_tombstones(self, up_to_seq: int) -> int:
        """Forget tombstones no index snapshot needs any more (seq ≤ `up_to_seq`); their labels
        become free for new documents (every graph already holds them as deleted)."""
        with self._write_lock, self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO free_labels SELECT label FROM documents WHERE deleted = 1 AND seq <= ?",
                (up_to_seq,),
            )
            return conn.execute("DELETE FROM documents WHERE deleted = 1 AND seq <= ?", (up_to_seq,)).rowcount

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. Whatever fails, COMMIT included (SQLite may already have rolled
        back after SQLITE_FULL), nothing of it stays."""
        conn = self._writer
        with storage_errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _next_seq(self, conn: sqlite3.Connection) -> int:
        seq = self._last_seq(conn) + 1
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?)", (str(seq),))
        return seq

    @staticmethod
    def _last_seq(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        return int(row[0]) if row else 0

    # -- reads --------------------------------------------------------------------------------
    def last_seq(self) -> int:
        with self._read() as conn:
            return self._last_seq(conn)

    def count(self) -> int:
        """The number of live documents."""
        with self._read() as conn:
            return conn.execute("SELECT count(*) FROM documents WHERE deleted = 0").fetchone()[0]

    def live_labels(self) -> np.ndarray:
        """Sorted labels of all live documents."""
        with self._read() as conn:
            return np.asarray(
                [r[0] for r in conn.execute("SELECT label FROM documents WHERE deleted = 0 ORDER BY label")], np.int64
            )

    def get(self, doc_id: str) -> StoredDocument | None:
        with self._read_as_of_one_commit() as conn:  # the row and its tokens
            row = conn.execute(
                "SELECT label, id, vector, text, metadata FROM documents WHERE id = ? AND deleted = 0", (doc_id,)
            ).fetchone()
            if row is None:
                return None
            doc = self._document(row, True, True)
            if self.token_dim:
                count, blob = conn.execute("SELECT count, blob FROM tokens WHERE label = ?", (doc.label,)).fetchone()
                doc = replace(doc, tokens=self._tokens(count, blob))
        return doc

    def tokens(self, labels: Sequence[int]) -> dict[int, np.ndarray]:
        """Token matrices `(n_i, token_dim)` float16 of the live documents among `labels`."""
        with self._read() as conn:
            rows = self._select_in(conn, "SELECT label, count, blob FROM tokens WHERE label IN ({})", labels)
        return {label: self._tokens(count, blob) for label, count, blob in rows}

    def iter_tokens(
        self, labels: Sequence[int] | None = None, batch: int = 4096
    ) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
        """Yield `(labels (n,), [token matrix (n_i, token_dim) float16])` of live documents."""
        if labels is not None:
            for start in range(0, len(labels), batch):
                found = self.tokens(labels[start : start + batch])
                if found:
                    keys = sorted(found)
                    yield np.asarray(keys, np.int64), [found[k] for k in keys]
            return
        with self._read() as conn:
            cursor = conn.execute("SELECT label, count, blob FROM tokens ORDER BY label")
            while rows := cursor.fetchmany(batch):
                yield (
                    np.fromiter((r[0] for r in rows), np.int64, len(rows)),
                    [self._tokens(count, blob) for _, count, blob in rows],
                )

    def fetch(
        self, labels: Sequence[int], text: bool = False, metadata: bool = False, vector: bool = True
    ) -> dict[int, StoredDocument]:
        """Live documents (with their ids) for `labels`; absent labels are skipped."""
        cols = (
            "label, id"
            + (", vector" if vector else ", NULL")
            + (", text" if text else ", NULL")
            + (", metadata" if metadata else ", NULL")
        )
        with self._read() as conn:
            rows = self._select_in(conn, f"SELECT {cols} FROM documents WHERE deleted = 0 AND label IN ({{}})", labels)
        return {row[0]: self._document(row, text, metadata) for row in rows}

    def ids(self, labels: Sequence[int]) -> dict[int, str]:
        """The caller's id of each live document among `labels`; absent labels are skipped.
        What a search needs when it includes nothing: no row object per document."""
        with self._read() as conn:
            return dict(
                self._select_in(conn, "SELECT label, id FROM documents WHERE deleted = 0 AND label IN ({})", labels)
            )

    def backup_to(self, path: str) -> tuple[int, int]:
        """Copy the store to a new SQLite file at `path` with SQLite's online backup API, in one
        step (one read transaction: a consistent state while writers go on, as WAL allows).
        Returns `(last seq, live documents)` of the copy."""
        dest = sqlite3.connect(path)
        try:
            with storage_errors(), self._read() as conn:
                conn.backup(dest)
            seq = self._last_seq(dest)
            documents = dest.execute("SELECT count(*) FROM documents WHERE deleted = 0").fetchone()[0]
            dest.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            dest.close()
        return seq, documents

    def scroll(self, after: str | None, limit: int) -> list[StoredDocument]:
        """Up to `limit` live documents with ids sorting after `after` (all when None), in id
        order, with text, metadata, vector and tokens. Paging by id, not by offset, is stable
        under concurrent writes: a document written between pages is seen exactly when its id
        sorts after the cursor."""
        with self._read_as_of_one_commit() as conn:  # the rows and their tokens
            rows = conn.execute(
                "SELECT label, id, vector, text, metadata FROM documents"
                " WHERE deleted = 0 AND id > ? ORDER BY id LIMIT ?",
                ("" if after is None else after, limit),
            ).fetchall()
            docs = [self._document(row, True, True) for row in rows]
            if self.token_dim and docs:
                found = self._select_in(
                    conn, "SELECT label, count, blob FROM tokens WHERE label IN ({})", [d.label for d in docs]
                )
                tokens = {label: self._tokens(count, blob) for label, count, blob in found}
                docs = [replace(d, tokens=tokens[d.label]) for d in docs]
        return docs

    def vectors(self, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """`(labels (m,) sorted, vectors (m, dim))` of the live documents among `labels`."""
        with self._read() as conn:
            rows = self._select_in(
                conn, "SELECT label, vector FROM documents WHERE deleted = 0 AND label IN ({})", labels
            )
        rows.sort()
        found = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        X = np.frombuffer(b"".join(r[1] for r in rows), "<f4").reshape(len(rows), self.dim)
        return found, X.astype(np.float32)

    def contents(self, ids: Sequence[str] | None = None) -> dict[str, tuple[str | None, str]]:
        """`id → (text, metadata as stored JSON)` of the live documents (all, or those among
        `ids`), in label order: what an encoder upgrade compares to find documents to re-embed."""
        with self._read() as conn:
            if ids is None:
                rows = conn.execute(
                    "SELECT id, text, metadata FROM documents WHERE deleted = 0 ORDER BY label"
                ).fetchall()
            else:
                rows = self._select_in(
                    conn, "SELECT id, text, metadata FROM documents WHERE deleted = 0 AND id IN ({})", ids
                )
        return {doc_id: (text, metadata) for doc_id, text, metadata in rows}

    def filter_labels(self, conditions: list[tuple[str, str, Any]]) -> np.ndarray:
        """Sorted labels of live documents matching every `(key, kind, value)` condition."""
        sql = " INTERSECT ".join(
            ["SELECT label FROM fields WHERE key = ? AND kind = ? AND value = ?"] * len(conditions)
        )
        params = [p for cond in conditions for p in cond]
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY label", params).fetchall()
        return np.asarray([r[0] for r in rows], np.int64)

    def keyword_search(self, expression: str, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The BM25 top-k live documents matching the FTS5 `expression` (among `allowed` labels,
        if given): `(labels (m,) int64, scores (m,) float32)`, best first, higher is better."""
        sql = "SELECT rowid, -bm25(keywords) FROM keywords WHERE keywords MATCH ? ORDER BY rank"
        with self._read() as conn:
            if allowed is None:
                rows = conn.execute(sql + " LIMIT ?", (expression, k)).fetchall()
            else:  # every match, then the allowed ones: a filter may leave few of them
                rows = conn.execute(sql, (expression,)).fetchall()
        labels = np.asarray([r[0] for r in rows], np.int64)
        scores = np.asarray([r[1] for r in rows], np.float32)
        if allowed is not None:
            keep = np.isin(labels, allowed)
            labels, scores = labels[keep], scores[keep]
        return labels[:k], scores[:k]

    def iter_vectors(
        self, labels: Sequence[int] | None = None, batch: int = 8192
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield `(labels (n,), vectors (n, dim))` for live documents: all, or those in `labels`."""
        if labels is not None:
            for start in range(0, len(labels), batch):
                found, X = self.vectors(labels[start : start + batch])
                if len(found):
                    yield found, X
            return
        with self._read() as conn:
            cursor = conn.execute("SELECT label, vector FROM documents WHERE deleted = 0 ORDER BY label")
            while rows := cursor.fetchmany(batch):
                yield self._stack([(label, self._vector(blob)) for label, blob in rows])

    def changes_since(self, seq: int, batch: int = 8192) -> Generator[Changes, None, None]:
        """Replay the latest state of every row written after `seq`, in (seq, label) order.

        One SELECT, so the whole replay reads one consistent snapshot of the store.
        """
        with self._read() as conn:
            cursor = conn.execute(
                "SELECT label, deleted, vector FROM documents WHERE seq > ? ORDER BY seq, label", (seq,)
            )
            while rows := cursor.fetchmany(batch):
                live = [(label, self._vector(blob)) for label, deleted, blob in rows if not deleted]
                labels, vectors = (
                    self._stack(live) if live else (np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32))
                )
                dead = np.asarray([label for label, deleted, _ in rows if deleted], np.int64)
                yield Changes(labels, vectors, dead)

    # -- helpers ------------------------------------------------------------------------------
    def _token_blob(self, doc: NewDocument) -> tuple[int, bytes] | None:
        if not self.token_dim:
            return None
        tokens = np.ascontiguousarray(doc.tokens, "<f2") if doc.tokens is not None else None
        if tokens is None or tokens.ndim != 2 or tokens.shape[1] != self.token_dim or not len(tokens):
            raise Invalid(
                f"document {doc.id!r}: a non-empty (n, {self.token_dim}) token matrix is required",
                code="invalid_tokens",
            )
        return len(tokens), tokens.tobytes()

    def _tokens(self, count: int, blob: bytes) -> np.ndarray:
        assert self.token_dim is not None
        return np.frombuffer(blob, "<f2").reshape(count, self.token_dim)

    def _vector(self, blob: bytes) -> np.ndarray:
        return np.frombuffer(blob, "<f4").astype(np.float32)

    def _document(self, row: tuple, text: bool, metadata: bool) -> StoredDocument:
        label, doc_id, blob, doc_text, doc_meta = row
        return StoredDocument(
            label=label,
            id=doc_id,
            vector=self._vector(blob) if blob is not None else None,
            text=doc_text if text else None,
            metadata=json.loads(doc_meta) if metadata else None,
            nbytes=(len(doc_text or "") if text else 0) + (len(doc_meta) if metadata else 0),
        )

    def _stack(self, pairs: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        labels = np.fromiter((p[0] for p in pairs), np.int64, len(pairs))
        return labels, np.stack([p[1] for p in pairs]).astype(np.float32, copy=False)

    @staticmethod
    def _select_in(conn: sqlite3.Connection, sql: str, values: Sequence) -> list[tuple]:
        values = [v.item() if isinstance(v, np.generic) else v for v in values]
        rows: list[tuple] = []
        for start in range(0, len(values), _SQL_VARS):
            chunk = values[start : start + _SQL_VARS]
            rows += conn.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
        return rows
