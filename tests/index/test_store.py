"""The SQLite store: upserts, tombstones, the write sequence, replay, filters, reopening."""

import sqlite3
import threading

import numpy as np
import pytest

from index.errors import Invalid
from index.filters import parse_filter
from index.store import NewDocument, Store


def doc(i: int, dim: int = 4, **meta) -> NewDocument:
    return NewDocument(id=f"d{i}", vector=np.full(dim, i, np.float32), text=f"text {i}", metadata=meta)


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "store.sqlite"), dim=4)
    yield s
    s.close()


def test_put_assigns_one_seq_per_transaction_and_stable_labels(store):
    seq1, labels1 = store.put([doc(1), doc(2)])
    seq2, labels2 = store.put([doc(2), doc(3)])  # d2 is updated, keeps its label
    assert (seq1, seq2) == (1, 2)
    assert labels2[0] == labels1[1] and labels2[1] not in labels1
    assert store.count() == 3 and store.last_seq() == 2
    got = store.get("d2")
    assert got.text == "text 2" and np.array_equal(got.vector, np.full(4, 2, np.float32))


def test_delete_leaves_a_tombstone_that_replays(store):
    store.put([doc(1), doc(2), doc(3)])
    seq, labels, ids = store.delete(["d2", "missing"])
    assert ids == ["d2"] and seq == 2 and store.count() == 2
    assert store.get("d2") is None
    changes = list(store.changes_since(1))
    assert [c.deleted.tolist() for c in changes] == [labels.tolist()]
    assert all(len(c.labels) == 0 for c in changes)
    # nothing to delete: no new seq
    assert store.delete(["missing"])[0] == 2


def test_ids_and_fetch_give_the_live_documents_of_the_labels_asked_for(store):
    _, labels = store.put([doc(i) for i in range(1, 5)])
    store.delete(["d2"])
    asked = [*labels.tolist(), 999]  # d2's tombstone and a label never given are skipped
    want = {label: f"d{i}" for i, label in zip(range(1, 5), labels.tolist()) if i != 2}
    assert store.ids(asked) == want
    assert {label: d.id for label, d in store.fetch(asked, vector=False).items()} == want


def test_close_waits_for_the_reads_in_flight(store):
    """No connection may outlive `close`: SQLite's last one deletes the -wal and -shm files by
    name, which by then may belong to another store at the same path."""
    store.put([doc(1), doc(2)])
    reading = store.changes_since(0, batch=1)
    next(reading)  # a read in flight: it holds a connection
    closing = threading.Thread(target=store.close)
    closing.start()
    closing.join(0.3)
    assert closing.is_alive()  # waits for the read (it would return at once, leaving it open)
    reading.close()
    closing.join(10)
    assert not closing.is_alive()
    with pytest.raises(sqlite3.ProgrammingError):
        store.get("d1")


@pytest.mark.parametrize("read", ["get", "scroll"])
def test_a_document_and_its_tokens_are_read_as_of_one_commit(tmp_path, monkeypatch, read):
    """`get` and `scroll` read a multi-vector document's row, then its token matrix. Each SELECT
    on an autocommit connection sees its own commit, so a delete between the two left a live
    row without tokens: an AssertionError in scroll, a TypeError in get, both 500s over HTTP
    (found by a race run of scrolls beside writes). Both now read in one transaction."""
    s = Store(str(tmp_path / "tokens.sqlite"), dim=4, token_dim=3)
    try:
        zero = np.zeros(4, np.float32)
        s.put([NewDocument(id=f"t{i}", vector=zero, tokens=np.full((i + 1, 3), i)) for i in range(3)])
        deleted: list = []
        document = s._document

        def delete_meanwhile(*args):  # called between the row's SELECT and the tokens'
            if not deleted:
                deleted.append(s.delete(["t1"]))
            return document(*args)

        monkeypatch.setattr(s, "_document", delete_meanwhile)
        docs = s.scroll(None, 10) if read == "scroll" else [s.get("t1")]
        assert deleted and deleted[0][2] == ["t1"]
        want = ["t0", "t1", "t2"] if read == "scroll" else ["t1"]
        assert [d.id for d in docs] == want  # as of the commit before the delete
        assert all(d.tokens is not None and len(d.tokens) == int(d.id[1]) + 1 for d in docs)
        monkeypatch.undo()
        assert s.get("t1") is None and [d.id for d in s.scroll(None, 10)] == ["t0", "t2"]
    finally:
        s.close()


def test_changes_since_gives_latest_state_in_seq_order(store):
    store.put([doc(1), doc(2)])
    store.put([NewDocument(id="d1", vector=np.full(4, 9, np.float32))])
    store.delete(["d2"])
    full = list(store.changes_since(0))
    labels = np.concatenate([c.labels for c in full])
    vectors = np.concatenate([c.vectors for c in full])
    assert labels.tolist() == [store.get("d1").label]
    assert vectors[0][0] == 9
    assert sum(len(c.deleted) for c in full) == 1


def test_labels_are_reused_only_after_their_tombstone_is_purged(store):
    _, first = store.put([doc(1), doc(2)])
    store.delete(["d1"])
    _, same = store.put([doc(2)])  # an update keeps its label
    assert same[0] == first[1]
    _, revived = store.put([doc(1)])  # an unpurged tombstone is the same row, revived
    assert revived[0] == first[0]
    store.delete(["d1"])
    assert store.purge_tombstones(up_to_seq=store.last_seq()) == 1
    _, reused = store.put([doc(3), doc(4)])  # a purged label goes to the first new document
    assert reused[0] == first[0] and reused[1] not in first
    # churn: labels (and what they size) follow the documents, not the number of writes
    for _ in range(20):
        store.put([doc(i) for i in range(10, 20)])
        store.delete([f"d{i}" for i in range(10, 20)])
        store.purge_tombstones(store.last_seq())
    assert max(store.live_labels()) <= 4 and store.label_ceiling(0) <= 15


def test_bad_documents_change_nothing(store):
    store.put([doc(1)])
    with pytest.raises(Invalid):
        store.put([doc(2), NewDocument(id="bad", vector=np.zeros(3, np.float32))])
    with pytest.raises(Invalid):
        store.put([NewDocument(id="nan", vector=np.zeros(4, np.float32), metadata={"x": float("nan")})])
    assert store.count() == 1 and store.last_seq() == 1


@pytest.mark.parametrize("where", ["top", "list", "nested"])
@pytest.mark.parametrize("big", [1 << 63, -(1 << 63) - 1, 1 << 200], ids=["2^63", "-2^63-1", "2^200"])
def test_integers_past_64_bits_are_refused_whole_and_the_largest_that_fit_are_kept_and_filterable(store, where, big):
    value = {"top": big, "list": [1, big], "nested": {"deep": [big]}}[where]
    with pytest.raises(Invalid, match="64-bit"):
        store.put([doc(1), doc(2, x=value)])
    assert store.count() == 0 and store.last_seq() == 0
    with pytest.raises(Invalid, match="64-bit"):
        parse_filter({"x": big})
    edge = (1 << 63) - 1 if big > 0 else -(1 << 63)
    store.put([doc(1, x=edge), doc(2, x=edge - 1 if big > 0 else edge + 1)])
    assert store.get("d1").metadata == {"x": edge}
    assert store.filter_labels(parse_filter({"x": edge})).tolist() == [store.get("d1").label]


def test_filters_match_scalars_lists_and_types(store):
    store.put(
        [
            doc(1, lang="en", year=2020, draft=True, tags=["a", "b"]),
            doc(2, lang="en", year=2021.0, draft=False, tags=["b"]),
            doc(3, lang="fr", year=2020, nested={"x": 1}),
        ]
    )
    labels = {store.get(f"d{i}").label: f"d{i}" for i in (1, 2, 3)}

    def ids(f):
        return sorted(labels[label] for label in store.filter_labels(parse_filter(f)).tolist())

    assert ids({"lang": "en"}) == ["d1", "d2"]
    assert ids({"lang": "en", "year": 2020}) == ["d1"]
    assert ids({"year": 2021}) == ["d2"]  # 2021 == 2021.0
    assert ids({"draft": True}) == ["d1"] and ids({"draft": 1}) == []  # booleans are not numbers
    assert ids({"tags": "b"}) == ["d1", "d2"]  # list membership
    assert ids({"lang": "de"}) == []
    store.delete(["d1"])
    assert ids({"tags": "b"}) == ["d2"]
    with pytest.raises(Invalid):
        parse_filter({"nested": {"x": 1}})


def test_reopen_keeps_everything(tmp_path):
    path = str(tmp_path / "s.sqlite")
    s = Store(path, 4)
    s.put([doc(i, k=i % 2) for i in range(50)])
    s.delete(["d3"])
    s.close()
    s = Store(path, 4)
    assert s.count() == 49 and s.last_seq() == 2
    assert len(s.filter_labels(parse_filter({"k": 1}))) == 24
    _, X = next(s.iter_vectors())
    assert X.shape == (49, 4)
    s.close()
