"""Multi-vector collections in index/: FDE candidates + exact MaxSim on token sets of real text
(made by the model-free `FakeEncoder`; tests/e2e/test_models.py uses MiniLM's), float16 token
storage as the source of truth, filters, deletes, restart, and bad input."""

import random

import numpy as np
import pytest

from index import Catalog, HnswParams, Manifest, NewDocument, Query, WhatIf
from index.collection.multivector import KnownScores
from index.errors import Invalid
from index.fde import MultiVectorConfig
from index.maxsim import chamfer
from tests.support.datasets import wordnet_glosses
from tests.support.fake_encoder import FakeEncoder


@pytest.fixture(scope="module")
def gloss_tokens():
    """1,560 WordNet glosses as token matrices: 1,500 documents, 60 held-out queries."""
    rows = random.Random(3).sample(wordnet_glosses(), 1560)
    texts = [f"{lemmas}: {gloss}" for _, _, lemmas, gloss in rows]
    encoder = FakeEncoder(dim=384)
    return encoder.encode_tokens(texts[:1500], "document"), encoder.encode_tokens(texts[1500:], "query")


def make(tmp_path, token_dim=384, **config):
    catalog = Catalog(str(tmp_path / "data"))
    manifest = Manifest(
        name="mv",
        dim=0,
        metric="ip",
        hnsw=HnswParams(),
        created_at="test",
        multivector=MultiVectorConfig(token_dim=token_dim, **config),
    )
    return catalog, catalog.create(manifest)


def fill(collection, sets):
    for s in range(0, len(sets), 500):
        collection.upsert(
            [
                NewDocument(id=f"d{i}", vector=None, tokens=t, metadata={"part": i % 4})
                for i, t in zip(range(s, s + 500), sets[s : s + 500])
            ]
        )


def truth(queries, sets, k=10):
    stored = [t.astype(np.float16).astype(np.float32) for t in sets]  # what the store holds
    return [set(f"d{j}" for j in np.argsort(-chamfer(q, stored), kind="stable")[:k]) for q in queries]


def ids(result):
    return [[m.id for m in row] for row in result.matches]


def test_fde_candidates_reranked_by_maxsim_match_brute_force(tmp_path, gloss_tokens):
    docs, queries = gloss_tokens
    catalog, collection = make(tmp_path)
    fill(collection, docs)
    assert collection.kind == "multivector" and len(collection) == 1500
    expected = truth(queries, docs)
    # Bag-of-words tokens make MaxSim ties closer than a real model's (MiniLM reaches 0.9 with 100
    # candidates: tests/e2e/test_models.py); 400 candidates measured 0.96 here.
    found = ids(collection.search(Query(queries, 10, candidates=400)))
    recall = np.mean([len(set(f) & e) / 10 for f, e in zip(found, expected)])
    assert recall >= 0.9, recall
    exact = ids(collection.search(Query(queries, 10, exact=True)))
    assert np.mean([len(set(f) & e) / 10 for f, e in zip(exact, expected)]) >= 0.99
    # scores are exact Chamfer of the stored float16 tokens
    result = collection.search(Query(queries[:1], 3))
    stored = collection.get(result.matches[0][0].id).tokens
    assert result.matches[0][0].score == pytest.approx(float(chamfer(queries[0], [stored])[0]), abs=1e-4)
    # ball carving merges similar query tokens and keeps most of the result
    carved = ids(collection.search(Query(queries, 10, candidates=400, ball_carving=0.7)))
    assert np.mean([len(set(c) & set(f)) / 10 for c, f in zip(carved, found)]) >= 0.7
    catalog.close()


def test_tokens_are_the_source_of_truth_and_survive_restart(tmp_path, gloss_tokens):
    docs, queries = gloss_tokens
    catalog, collection = make(tmp_path, final_dim=2048)
    fill(collection, docs[:600])
    got = collection.get("d7").tokens
    assert got.shape == docs[7].shape and np.abs(got - docs[7]).max() < 1e-3  # float16 of unit tokens
    labels, derived = collection.derive_fdes()
    assert np.array_equal(derived, collection._state.vectors.gather(labels)[1])  # FDEs rebuild exactly from tokens
    collection.delete(["d1", "d2"])
    after_delete = ids(collection.search(Query(queries, 10, candidates=600)))
    assert not {"d1", "d2"} & {i for row in after_delete for i in row}
    filtered = collection.search(Query(queries, 5, filter={"part": 3}))
    assert all(int(m.id[1:]) % 4 == 3 for row in filtered.matches for m in row)
    assert filtered.strategy == "exact"  # 150 allowed documents: brute-force MaxSim
    catalog.close()

    catalog = Catalog(str(tmp_path / "data"))
    catalog.open_all()
    reopened = catalog.get("mv")
    assert reopened.kind == "multivector" and len(reopened) == 598
    assert reopened.manifest.multivector == MultiVectorConfig(token_dim=384, final_dim=2048)
    assert ids(reopened.search(Query(queries, 10, candidates=600))) == after_delete
    catalog.close()


def test_bad_input_is_rejected_and_changes_nothing(tmp_path, gloss_tokens):
    docs, _ = gloss_tokens
    catalog, collection = make(tmp_path, max_tokens=40)
    fill(collection, docs[:10])
    good = docs[20]
    bad_batches = {
        "ragged": [[0.1] * 384, [0.1] * 383],
        "empty": np.zeros((0, 384), np.float32),
        "wrong dim": np.ones((3, 128), np.float32),
        "nan": np.where(np.arange(384) == 5, np.nan, good[:1]),
        "zero token": np.zeros((2, 384), np.float32),
        "too many": np.ones((41, 384), np.float32),
    }
    for what, tokens in bad_batches.items():
        with pytest.raises(Invalid):
            collection.upsert(
                [NewDocument(id="fine", vector=None, tokens=good), NewDocument(id=what, vector=None, tokens=tokens)]
            )
        with pytest.raises(Invalid):
            collection.search(Query([tokens], 5))
    assert len(collection) == 10 and collection._state.store.count() == 10
    with pytest.raises(Invalid):
        collection.search(Query(np.ones((1, collection.manifest.dim), np.float32), 5))  # a dense-only operation
    with pytest.raises(Invalid):
        collection.search(Query([good], 5, candidates=0))
    catalog.close()


def test_scroll_returns_token_matrices_not_fdes(tmp_path, gloss_tokens):
    sets, _ = gloss_tokens
    catalog, c = make(tmp_path)
    fill(c, sets[:500])
    docs, after = c.scroll(None, limit=1000)
    assert after is None and len(docs) == 500
    for d in docs:
        assert d.vector is None
        assert np.allclose(d.tokens, sets[int(d.id[1:])], atol=1e-2)
    catalog.close()


def test_a_tuned_candidate_factor_sizes_the_default_shortlist_and_its_probes_steer(tmp_path, gloss_tokens):
    """The recall controller's choice for a multi-vector collection is a factor: the default
    shortlist is k · factor; probes say whether the request pinned its candidates."""
    docs, queries = gloss_tokens
    catalog, collection = make(tmp_path)
    fill(collection, docs[:300])
    default = collection.search(Query(queries[:2], 10, probe=True))
    assert default.candidates == 100 and default.probe.funnel and not default.probe.rerank_pinned
    assert collection.search(Query(queries[:2], 10, candidates=50, probe=True)).probe.rerank_pinned
    collection.set_rerank_factor(collection.manifest.dim, 25)
    assert collection.search(Query(queries[:2], 10)).candidates == 250
    assert collection.search(Query(queries[:2], 4)).candidates == 100
    collection.snapshot()
    catalog.close()
    again = Catalog(str(tmp_path / "data"))
    again.open_all()
    assert again.get("mv").search(Query(queries[:2], 10)).candidates == 250
    again.close()


def test_probes_merge_into_one_brute_force_pass_with_the_same_readings(tmp_path, gloss_tokens):
    """Sampled searches of a multi-vector collection merge like dense ones (one exact MaxSim pass
    reads every token matrix once for all of them) and each query reads what it read alone."""
    docs, queries = gloss_tokens
    catalog, collection = make(tmp_path)
    fill(collection, docs[:600])
    singles = [collection.search(Query(queries[i : i + 1], 10, candidates=20, probe=True)).probe for i in range(12)]
    pinned_other = collection.search(Query(queries[:2], 10, candidates=40, probe=True)).probe
    merged = collection.merge_probes([*singles, pinned_other])
    assert [p.queries for p in merged] == [12, 2] and merged[0].funnel and merged[0].rerank_pinned
    alone = [collection.evaluate_recall(p) for p in singles]
    together = collection.evaluate_recall(merged[0])
    for stage in (0, 1):
        one_by_one = np.concatenate([r[stage].recall for r in alone])
        assert np.allclose(np.nan_to_num(one_by_one, nan=-1), np.nan_to_num(together[stage].recall, nan=-1))
    # the readings can fail: 20 FDE candidates miss some of the true top 10
    assert np.nanmean(together[1].recall) < 1.0
    catalog.close()


def test_what_if_reruns_read_what_searches_at_those_candidates_read(tmp_path, gloss_tokens):
    """A multi-vector probe re-run at other efs and candidate factors against one brute-force
    MaxSim answer reads, per query, what a search at that setting measures itself (its final
    recall: either knob only buys candidates for the MaxSim re-rank)."""
    docs, queries = gloss_tokens
    catalog, collection = make(tmp_path)
    fill(collection, docs[:600])
    probe = collection.search(Query(queries[:12], 10, ef=10, candidates=20, probe=True)).probe
    measured = collection.evaluate_recall(probe, WhatIf(efs=(10, 80), factors=(1, 2, 6)))
    what_if = {(s.knob, s.setting): s.recall for s in measured[2:]}
    assert set(what_if) == {("ef", 10), ("ef", 80), ("factor", 1), ("factor", 2), ("factor", 6)}
    oracle = truth(queries[:12], docs[:600])
    for f in (1, 2, 6):
        searched = collection.search(Query(queries[:12], 10, ef=10, candidates=10 * f, probe=True))
        assert np.allclose(what_if["factor", f], collection.evaluate_recall(searched.probe)[1].recall, equal_nan=True)
        # ...and what the user got at that setting, against brute-force MaxSim computed here
        assert np.allclose(what_if["factor", f], [len(set(r) & t) / 10 for r, t in zip(ids(searched), oracle)])
    own = collection.search(Query(queries[:12], 10, ef=80, candidates=20, probe=True)).probe
    assert np.allclose(what_if["ef", 80], collection.evaluate_recall(own)[1].recall, equal_nan=True)
    assert np.nanmean(what_if["factor", 6]) > np.nanmean(what_if["factor", 1])
    catalog.close()


def test_known_scores_gather_a_few_labels_per_query_from_a_streamed_pass():
    """The exact scores a brute-force pass keeps for each query's candidates: whatever batch
    they stream in, and -inf for labels it never saw (deleted since the search)."""
    wanted = np.array([[7, 3, -1, 9], [2, 2, 5, -1]])
    known = KnownScores(wanted)
    S = np.arange(2 * 6, dtype=np.float32).reshape(2, 6)  # query i, label j -> 6i + j
    known.record(np.array([1, 2, 3]), S[:, :3])
    known.record(np.array([5, 7, 8]), S[:, 3:])
    got = known.top_k(np.array([[3, 7, 9, -1], [5, 2, -1, -1]]), 2)
    assert got.tolist() == [[4.0, 2.0], [9.0, 7.0]]  # label 9 never streamed: -inf, below both
    assert known.top_k(np.array([[9, -1], [-1, -1]]), 2).tolist() == [[-np.inf] * 2] * 2
