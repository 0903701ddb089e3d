"""The graph file vecnest writes is the file hnswlib's own `save_index` writes, byte for byte
(vecnest writes it from a copy so that a snapshot does not hold the GIL; `index/hnsw.py`)."""

import hnswlib
import numpy as np
import pytest

from index.hnsw import HnswIndex, HnswParams, write_hnswlib_file


@pytest.mark.parametrize(
    "n, dim, m, space, deleted",
    [(0, 8, 16, "ip", []), (1, 8, 16, "cosine", []), (300, 16, 4, "ip", []), (3000, 32, 8, "l2", [3, 77, 2999])],
)
def test_the_graph_file_is_hnswlibs_own(tmp_path, n, dim, m, space, deleted):
    X = np.random.default_rng(n).standard_normal((n, dim)).astype(np.float32)
    index = hnswlib.Index(space=space, dim=dim)
    index.init_index(max_elements=n + 50, M=m, ef_construction=40, random_seed=n)
    if n:
        index.add_items(X)
    for label in deleted:
        index.mark_deleted(label)
    theirs, ours = tmp_path / "theirs.bin", tmp_path / "ours.bin"
    index.save_index(str(theirs))
    write_hnswlib_file(index.__getstate__()[0], str(ours))
    assert ours.read_bytes() == theirs.read_bytes()
    if n > 1:  # upper levels exist, so the per-element link blocks were exercised
        assert index.__getstate__()[0]["max_level"] > 0


def test_a_saved_index_loads_with_its_upper_levels_and_deletions(tmp_path):
    X = np.random.default_rng(1).standard_normal((2000, 24)).astype(np.float32)
    index = HnswIndex(24, "cosine", HnswParams(m=8, ef_construction=60, ef_search=50), capacity=16)
    index.add(np.arange(2000), X)
    index.delete(np.array([5, 6]))
    index.save(str(tmp_path / "g.bin"))
    loaded = HnswIndex.load(str(tmp_path / "g.bin"))
    before, after = index.search(X[:50], 10), loaded.search(X[:50], 10)
    assert np.array_equal(before.labels, after.labels)
    assert not ({5, 6} & set(after.labels.ravel().tolist()))
