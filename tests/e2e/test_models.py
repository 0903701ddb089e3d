"""What needs the real model: its own truncation, its token embeddings under MUVERA, and the
cached vectors the index tests use (tests/data) still being what it computes."""

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from index import DimView, FdeEncoder, Invalid, MultiVectorConfig, NewDocument, Query
from index.maxsim import chamfer
from service.settings import Settings
from tests.index.test_multivector import fill, ids, make, truth
from tests.support import vectors
from tests.support.app import app_client
from tests.support.datasets import wordnet_glosses


def test_cached_gloss_vectors_are_what_the_model_computes(minilm):
    texts, X = vectors.glosses()
    rows = random.Random(0).sample(range(len(texts)), 64)
    fresh = minilm.encode([texts[i] for i in rows], "document")
    cosines = np.einsum("ij,ij->i", fresh, X[rows])
    assert cosines.min() > 0.999, cosines.min()  # float16 storage, nothing else


def test_prefix_view_equals_the_models_own_truncation(minilm):
    texts = ["A small dog plays in the garden.", "Quantum computers use qubits.", "Bread needs yeast to rise."]
    full = minilm.encode(texts, "document")
    for d in (32, 64, 128, 256):
        theirs = minilm._model.encode(texts, truncate_dim=d, normalize_embeddings=True, convert_to_numpy=True)
        ours = DimView(d, 384, "cosine").apply(full)
        assert ours.shape == (3, d)
        assert np.abs(ours - theirs).max() <= 1e-5


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_fde_inner_products_track_chamfer_on_minilm_tokens(minilm, scifact_subset):
    docs = minilm.encode_tokens([f"{d['title']} {d['text']}" for d in scifact_subset[:300]], "document")
    queries = minilm.encode_tokens([d["title"] for d in scifact_subset[300:330]], "query")
    fde = FdeEncoder(MultiVectorConfig(token_dim=minilm.dim))
    F, Fq = fde.documents(docs), fde.queries(queries)
    rho = [spearman(fde_row, chamfer(q, docs)) for q, fde_row in zip(queries, Fq @ F.T)]
    print(f"mean Spearman rho {np.mean(rho):.3f}")
    assert np.mean(rho) >= 0.7, rho
    # The estimate runs low in absolute terms on 200-token abstracts (a query token meets its
    # bucket's centroid, not its best match), so only the ranking is asserted.


def test_fde_candidates_reranked_by_maxsim_match_brute_force_on_minilm_tokens(tmp_path, minilm):
    rows = random.Random(3).sample(wordnet_glosses(), 1560)
    texts = [f"{lemmas}: {gloss}" for _, _, lemmas, gloss in rows]
    docs, queries = minilm.encode_tokens(texts[:1500], "document"), minilm.encode_tokens(texts[1500:], "query")
    catalog, collection = make(tmp_path)
    fill(collection, docs)
    expected = truth(queries, docs)
    found = ids(collection.search(Query(queries, 10, candidates=100)))
    assert np.mean([len(set(f) & e) / 10 for f, e in zip(found, expected)]) >= 0.9
    catalog.close()


def test_a_text_the_tokenizer_reads_nothing_of_is_an_empty_text_error_and_changes_nothing(tmp_path, minilm):
    texts = ["\u200b", "\x00", " \u200b\u200b "]  # zero-width and control characters: the tokenizer drops them
    tokens = minilm.encode_tokens(["a cat", *texts], "document")
    assert len(tokens[0]) == 2 and all(t.shape == (0, 384) for t in tokens[1:])
    catalog, collection = make(tmp_path)
    for t in tokens[1:]:
        with pytest.raises(Invalid) as refused:
            collection.upsert(
                [NewDocument(id="keep", vector=None, tokens=tokens[0]), NewDocument(id="x", vector=None, tokens=t)]
            )
        assert refused.value.code == "empty_text" and "no token the model embeds" in refused.value.message
        with pytest.raises(Invalid) as refused:
            collection.search(Query([t], 10))
        assert refused.value.code == "empty_text"
    assert len(collection) == 0  # the batch was refused whole
    catalog.close()


def test_a_broken_model_directory_is_a_422_and_the_default_model_loads(tmp_path):
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "modules.json").write_text("{not json")
    with app_client(Settings(data_dir=tmp_path / "data", model_dirs=[tmp_path])) as client:
        r = client.post("/v1/collections", json={"name": "broken", "model": "broken-model"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "model_load_failed"
        r = client.post("/v1/collections", json={"name": "fine"})
        assert r.status_code == 201 and r.json()["model"] == "all-MiniLM-L6-v2" and r.json()["dim"] == 384


def test_a_model_folder_that_ships_code_is_refused_without_running_it(tmp_path, minilm):
    """sentence-transformers refuses a module class from the folder itself unless
    trust_remote_code, which vecnest never passes: the code is not run and the request is a 422."""
    folder = tmp_path / "models" / "trojan"
    folder.mkdir(parents=True)
    for entry in os.listdir(minilm.path):
        if entry != "modules.json":
            os.symlink(os.path.join(minilm.path, entry), folder / entry)
    modules = json.loads((Path(minilm.path) / "modules.json").read_text())
    modules[-1]["type"] = "trojan_module.Module"
    (folder / "modules.json").write_text(json.dumps(modules))
    marker = tmp_path / "ran"
    (folder / "trojan_module.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom sentence_transformers.models import Normalize as Module\n"
    )
    with app_client(Settings(data_dir=tmp_path / "data", model_dirs=[tmp_path / "models"])) as client:
        r = client.post("/v1/collections", json={"name": "t", "model": "trojan"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "model_load_failed", r.text
    assert not marker.exists()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


@pytest.mark.parametrize("background_layers, user_layers", [(3, None), (None, 2)])
def test_user_calls_run_between_the_layers_of_a_background_call_and_get_their_own_depth(
    minilm, background_layers, user_layers
):
    """A user request that arrives while a background (upgrade) model call runs is encoded
    between that call's layers, not after it; each gets what it would alone, at the depth it
    asked for, whichever depth the paused call runs at. (Before: the user waited for the whole
    call, ~0.4 s for one abstract through all-mpnet-base-v2 here; and a user call at full depth
    run inside a shallower paused call would have run at that call's depth.)"""
    import concurrent.futures

    from service.inference import InferenceQueue, _Job

    glosses = [f"{lemmas}: {gloss}" for _, _, lemmas, gloss in wordnet_glosses()[:24]]
    user_text = "a small cat sleeps on the mat"
    blocks = minilm._blocks
    queue = InferenceQueue()
    queue.start()
    user = concurrent.futures.Future()
    seen: list[tuple[int, bool]] = []  # (block, the user's result is in) as the background call runs

    def arrive(index: int):
        def hook(module, args):
            if user.running() and not user.done():
                return  # the user's own call, between the background call's layers
            if not seen:  # the background call's first block: a user request arrives now
                queue._put(_Job(user, encoder=minilm, texts=[user_text], layers=user_layers))
            seen.append((index, user.done()))

        return hook

    handles = [block.register_forward_pre_hook(arrive(i)) for i, block in enumerate(blocks)]
    try:
        background = _Job(
            concurrent.futures.Future(),
            encoder=minilm,
            texts=glosses,
            kind="document",
            layers=background_layers,
            background=True,
        )
        queue._put(background)
        paused_vectors = background.future.result(timeout=60)
        user_vector = user.result(timeout=60)
    finally:
        for handle in handles:
            handle.remove()
        queue.stop()
    depth = background_layers or minilm.num_layers
    first_pass = seen[:depth]  # the model's batches of texts each run through the blocks
    assert [index for index, _ in first_pass] == list(range(depth)), seen
    assert first_pass[-1][1], f"the user request waited for the whole background pass: {seen}"
    alone = minilm.encode(glosses, "document", layers=background_layers)
    assert _cosines(paused_vectors, alone).min() > 0.9999
    assert _cosines(user_vector, minilm.encode([user_text], layers=user_layers))[0] > 0.9999
    other_depth = 1 if user_layers is None else None  # a depth the user did not ask for
    assert _cosines(user_vector, minilm.encode([user_text], layers=other_depth))[0] < 0.99
