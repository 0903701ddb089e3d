"""`vecnest migrate` (service/migrate.py): an embedded collection copied into the Qdrant backend
(qdrant-client's local mode in a folder) answers as the source did; an interrupted copy resumes
where it stopped and ends with every document once."""

import pytest

from index import Catalog, Elasticizer, HnswParams, Manifest, NewDocument, Query, open_qdrant_catalog
from service.cli import main

pytest.importorskip("qdrant_client", reason="the qdrant extra is part of the test install")


class Interrupt(Exception):
    pass


class StopAfter:
    """An output stream that interrupts the copy after `n` progress lines."""

    def __init__(self, n: int):
        self.n, self.lines = n, []

    def write(self, text: str) -> None:
        if text.strip():
            self.lines.append(text)
            if sum("documents," in line for line in self.lines) >= self.n:
                raise Interrupt

    def flush(self) -> None:
        pass


@pytest.fixture
def source(tmp_path, glosses):
    _, X = glosses
    data = tmp_path / "data"
    catalog = Catalog(str(data))
    m = Manifest(
        name="glosses",
        dim=384,
        metric="cosine",
        hnsw=HnswParams(),
        created_at="2026-01-01T00:00:00",
        dims=[64, 384],
        elasticizer=Elasticizer(kind="none"),
        encoder={"model": "all-MiniLM-L6-v2", "dim": 384},
    )
    c = catalog.create(m)
    c.upsert([NewDocument(id=f"d{i:04d}", vector=X[i], text=f"gloss {i}", metadata={"n": i % 3}) for i in range(700)])
    catalog.close()
    return data, X


def test_an_interrupted_migration_resumes_and_answers_as_the_source(tmp_path, source):
    from service.migrate import migrate

    data, X = source
    target = str(tmp_path / "qdrant")
    with pytest.raises(Interrupt):
        migrate("glosses", str(data), path=target, batch=100, out=StopAfter(3))
    out = StopAfter(10**6)
    assert migrate("glosses", str(data), path=target, batch=100, out=out) == 700
    assert any("resuming after id 'd0299' (300 documents copied before)" in line for line in out.lines)
    assert not (data / ".migrate" / "glosses.json").exists()
    # interrupted again, and the half-made target dropped on Qdrant meanwhile: the next run starts over
    other = str(tmp_path / "qdrant2")
    with pytest.raises(Interrupt):
        migrate("glosses", str(data), path=other, batch=100, out=StopAfter(2))
    gone = open_qdrant_catalog(path=other)
    gone.drop("glosses")
    gone.close()
    out = StopAfter(10**6)
    assert migrate("glosses", str(data), path=other, batch=100, out=out) == 700
    assert any("is gone from the Qdrant backend; starting over" in line for line in out.lines)

    embedded, qdrant = Catalog(str(data)), open_qdrant_catalog(path=target)
    embedded.open_all()
    a, b = embedded.get("glosses"), qdrant.get("glosses")
    assert b.manifest.encoder == a.manifest.encoder and b.dims == [64, 384] and len(b) == 700
    for query in (
        Query(X[900:920], 10, exact=True),
        Query(X[900:920], 10, dim=64, exact=True, rerank_factor=4),
        Query(X[900:920], 5, exact=True, filter={"n": 2}),
    ):
        left, right = a.search(query), b.search(query)
        assert [[m.id for m in row] for row in left.matches] == [[m.id for m in row] for row in right.matches]
    assert b.get("d0123").text == "gloss 123" and b.get("d0123").metadata == {"n": 0}
    embedded.close()
    qdrant.close()


def test_the_command_line(tmp_path, source, capsys):
    data, _ = source
    target = str(tmp_path / "qdrant")
    assert main(["migrate", "glosses", "--data-dir", str(data), "--to-path", target, "--batch", "500"]) == 0
    assert "the Qdrant backend holds 700 documents (the source 700)" in capsys.readouterr().err
    assert main(["migrate", "nope", "--data-dir", str(data), "--to-path", target]) == 1
    assert "not found" in capsys.readouterr().err
    # served from Qdrant since, a document updated there: running the copy again must not revert it
    qdrant = open_qdrant_catalog(path=target)
    newer = qdrant.get("glosses").get("d0005")
    qdrant.get("glosses").upsert([NewDocument(id="d0005", vector=newer.vector, text="updated on qdrant")])
    qdrant.close()
    assert main(["migrate", "glosses", "--data-dir", str(data), "--to-path", target]) == 1
    assert "already holds a collection 'glosses' (700 documents)" in capsys.readouterr().err
    qdrant = open_qdrant_catalog(path=target)
    assert qdrant.get("glosses").get("d0005").text == "updated on qdrant"
    qdrant.close()


def test_to_milvus_and_a_multivector_collection_to_qdrant(tmp_path, source, capsys):
    """The same command into the Milvus backend (milvus-lite's server); and a multi-vector
    collection (token matrices) into Qdrant, answering as the source does."""
    pytest.importorskip("pymilvus", reason="the milvus extra is part of the test install")
    from index import open_milvus_catalog
    from index.fde import MultiVectorConfig
    from tests.support.fake_encoder import FakeEncoder
    from tests.support.milvus import MilvusServer

    data, X = source
    server = MilvusServer(tmp_path / "milvus").start()
    try:
        assert main(["migrate", "glosses", "--data-dir", str(data), "--to-milvus", server.uri]) == 0
        assert "the Milvus backend holds 700 documents (the source 700)" in capsys.readouterr().err
        embedded, milvus = Catalog(str(data)), open_milvus_catalog(uri=server.uri)
        embedded.open_all()
        query = Query(X[900:910], 10, exact=True)
        left, right = embedded.get("glosses").search(query), milvus.get("glosses").search(query)
        assert [[m.id for m in row] for row in left.matches] == [[m.id for m in row] for row in right.matches]
        embedded.close()
        milvus.close()
    finally:
        server.stop()

    encoder = FakeEncoder(dim=32)
    texts = [f"gloss number {i} about {['cats', 'rivers', 'music'][i % 3]}" for i in range(60)]
    catalog = Catalog(str(data))
    m = Manifest(
        name="tokens",
        dim=0,
        metric="ip",
        hnsw=HnswParams(),
        created_at="t",
        multivector=MultiVectorConfig(token_dim=32),
    )
    c = catalog.create(m)
    c.upsert([NewDocument(id=f"t{i}", vector=None, tokens=t) for i, t in enumerate(encoder.encode_tokens(texts))])
    catalog.close()
    target = str(tmp_path / "qdrant")
    assert main(["migrate", "tokens", "--data-dir", str(data), "--to-path", target]) == 0
    embedded, qdrant = Catalog(str(data)), open_qdrant_catalog(path=target)
    embedded.open_all()
    queries = encoder.encode_tokens(["music gloss", "cats"], "query")
    left = embedded.get("tokens").search(Query(queries, 5, exact=True))
    right = qdrant.get("tokens").search(Query(queries, 5, exact=True))
    assert [[m.id for m in row] for row in left.matches] == [[m.id for m in row] for row in right.matches]
    embedded.close()
    qdrant.close()
