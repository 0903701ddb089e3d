"""`vecnest import` / `vecnest export` (through the Python client, the engine in-process): an
import of an export gives back the input; an interrupted import resumes where it stopped; a
BEIR corpus imports as text."""

import gzip
import json

import numpy as np
import pytest
import vecnest
import vecnest.transfer

from service.cli import main
from tests.support import TEXTS

pytestmark = pytest.mark.slow


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def documents(tmp_path):
    """600 documents with unit vectors (8-d), text and metadata; the 450th has a long text."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 8)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    docs = [
        {
            "id": f"doc-{i:04d}",
            "text": ("a long text " * 10 if i == 450 else f"short text {i}"),
            "metadata": {"i": i, "tags": ["x", "y"][: i % 3]},
            "vector": X[i].tolist(),
        }
        for i in range(600)
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path, docs


def assert_same(got: list[dict], want: list[dict]) -> None:
    """The same documents in the same order; vectors to float32 precision (a cosine collection
    re-normalises what it stores)."""
    assert [d["id"] for d in got] == [d["id"] for d in want]
    for g, w in zip(got, want):
        assert g["text"] == w["text"] and g["metadata"] == w["metadata"]
        assert np.allclose(g["vector"], w["vector"], atol=1e-6)


def cli(*args) -> int:
    return main([*args, "--quiet"])


def test_an_interrupted_import_resumes_and_an_export_gives_back_the_input(tmp_path, documents):
    path, docs = documents
    data, state = tmp_path / "data", tmp_path / "state"
    with vecnest.Client(path=str(data)) as client:  # the text limit stops the import at document 450
        client.create_collection("c", model=None, dim=8, limits={"max_text_chars": 60})
        with pytest.raises(vecnest.InvalidRequest):
            vecnest.transfer.import_file(client, path, "c", batch_size=100, progress=False, state_dir=state)
        assert client.get_collection("c").documents == 400  # four batches acknowledged
        client.update_collection("c", limits={"max_text_chars": 1000})
        result = vecnest.transfer.import_file(client, path, "c", batch_size=100, progress=False, state_dir=state)
        assert (result.skipped, result.imported, result.total) == (400, 200, 600)
    out = tmp_path / "export.jsonl"
    assert cli("export", "c", str(out), "--data-dir", str(data)) == 0
    exported = read_jsonl(out)
    assert_same(exported, docs)
    # and the export imports into a new collection (created from what the file holds) unchanged
    assert cli("import", str(out), "--collection", "copy", "--create", "--data-dir", str(data)) == 0
    again = tmp_path / "again.jsonl.gz"
    assert cli("export", "copy", str(again), "--data-dir", str(data)) == 0
    with gzip.open(again, "rt") as f:
        assert_same([json.loads(line) for line in f], docs)


def test_a_beir_corpus_imports_as_text(tmp_path):
    corpus = tmp_path / "beir"
    corpus.mkdir()
    rows = [{"_id": k, "title": k.title(), "text": v} for k, v in TEXTS.items()]
    (corpus / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tmp_path / "data"
    assert cli("import", str(corpus), "--collection", "beir", "--create", "--data-dir", str(data)) == 0
    with vecnest.Client(path=str(data)) as client:
        assert client.get("beir", "cat").text == f"Cat {TEXTS['cat']}"
        assert client.search("beir", "a cat resting on a mat", k=1)[0].id == "cat"
    assert cli("import", str(tmp_path / "missing.jsonl"), "--collection", "x", "--data-dir", str(data)) == 1
