"""The graph file vecnest writes is the file hnswlib's own `save_index` writes, byte for byte
(vecnest writes it from a copy so that a snapshot does not hold the GIL; `index/hnsw.py`), and a
file hnswlib would read past its memory is refused before hnswlib sees it."""

import json
import struct
import zlib

import hnswlib
import numpy as np
import pytest

from index.hnsw import _HNSWLIB_HEADER as HNSWLIB_HEADER
from index.hnsw import CorruptSnapshot, HnswIndex, HnswParams, check_hnswlib_file, write_hnswlib_file


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


# One corruption each, at an offset that hnswlib's header and records give (`_HNSWLIB_HEADER`):
# each one crashed or would crash the process at a search (hnswlib reads where its file says).
def _damage(data: bytearray, how: str) -> None:
    header = HNSWLIB_HEADER.unpack_from(data, 0)
    n, record, label_at, links_end, top = header[2], header[3], header[4], header[5], header[6]
    base, first_link = HNSWLIB_HEADER.size, HNSWLIB_HEADER.size + 4
    if how == "link past the last element":
        struct.pack_into("<I", data, first_link, 0x7FFFFFFF)
    elif how == "link count past its list":
        struct.pack_into("<H", data, base, 60000)
    elif how == "entry point past the last element":
        struct.pack_into("<I", data, 6 * 8 + 4, n + 5)
    elif how == "top level above the entry point's":
        struct.pack_into("<i", data, 6 * 8, top + 3)
    elif how == "more elements than records":
        struct.pack_into("<Q", data, 16, n * 10)
    elif how == "vectors of another dim":
        struct.pack_into("<Q", data, 4 * 8, label_at + 4)
    elif how == "a NaN vector":
        struct.pack_into("<f", data, base + links_end, float("nan"))
    elif how == "a label twice":
        data[base + label_at : base + label_at + 8] = data[base + record + label_at : base + record + label_at + 8]
    elif how == "an upper-level link to an element absent there":
        # the first element with upper-level lists: point its level-1 list at an element of level 0
        at, levels, lower = base + n * record, [], None
        for _ in range(n):
            (size,) = struct.unpack_from("<I", data, at)
            levels.append((at, size))
            at += 4 + size
        lower = next(i for i, (_, size) in enumerate(levels) if size == 0)
        at = next(at for at, size in levels if size)
        struct.pack_into("<HI", data, at + 4, 1, 0)  # count 1 (and 2 bytes of flags), ...
        struct.pack_into("<I", data, at + 8, lower)  # ... its one link: an element without upper levels
    elif how != "a sidecar that sizes hnswlib's allocation":  # the file as saved; its sidecar lies
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "link past the last element",
        "link count past its list",
        "entry point past the last element",
        "top level above the entry point's",
        "more elements than records",
        "vectors of another dim",
        "a NaN vector",
        "a label twice",
        "an upper-level link to an element absent there",
        "a sidecar that sizes hnswlib's allocation",
    ],
)
def test_a_graph_hnswlib_would_misread_is_refused_even_with_a_matching_checksum(tmp_path, how):
    X = np.random.default_rng(2).standard_normal((500, 16)).astype(np.float32)
    index = HnswIndex(16, "cosine", HnswParams(m=8, ef_construction=40), capacity=16)
    index.add(np.arange(500), X)
    path = tmp_path / "g.bin"
    index.save(str(path))
    check_hnswlib_file(str(path), 16)  # the file as saved passes
    data = bytearray(path.read_bytes())
    _damage(data, how)
    path.write_bytes(bytes(data))
    sidecar = json.loads((tmp_path / "g.bin.json").read_text())
    sidecar.update(bytes=len(data), crc32=zlib.crc32(data))  # as an archive from elsewhere would carry it
    if how == "a sidecar that sizes hnswlib's allocation":
        sidecar["slots"] = 10**6  # hnswlib allocates 1.25 x slots elements at load: a lie sizes it
    (tmp_path / "g.bin.json").write_text(json.dumps(sidecar))
    with pytest.raises(CorruptSnapshot, match="not a graph hnswlib can use"):
        HnswIndex.load(str(path), check=True)
