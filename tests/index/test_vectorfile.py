"""The memory-mapped full-dim mirror of the store: rows by label, growth, liveness, rebuild."""

import os

import numpy as np

from index.vectorfile import VectorFile


def test_rows_by_label_grow_and_survive_reopen(tmp_path):
    path = str(tmp_path / "v.f32")
    vf = VectorFile(path, 4, capacity=2)
    assert vf.fresh
    X = np.arange(40, dtype=np.float32).reshape(10, 4)
    vf.add(np.arange(1, 11), X)  # past the initial capacity
    assert vf.capacity >= 11 and len(vf) == 10
    labels, rows = vf.gather(np.array([7, 3, 99, -1, 10]))
    assert labels.tolist() == [7, 3, 10] and np.array_equal(rows, X[[6, 2, 9]])
    vf.delete(np.array([3, 1000]))
    assert vf.gather(np.array([3, 4]))[0].tolist() == [4]
    chunked = list(vf.chunks(size=4))
    assert np.concatenate([c[0] for c in chunked]).tolist() == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    vf.flush()
    again = VectorFile(path, 4)
    assert not again.fresh
    again.set_live(np.array([1, 2, 10]))
    labels, rows = again.gather(np.arange(12))
    assert labels.tolist() == [1, 2, 10] and np.array_equal(rows, X[[0, 1, 9]])


def test_a_mis_sized_file_is_treated_as_missing(tmp_path):
    path = tmp_path / "v.f32"
    path.write_bytes(b"\x00" * 10)  # not a whole number of 4-dim rows
    vf = VectorFile(str(path), 4)
    assert vf.fresh and len(vf) == 0 and os.path.getsize(path) % 16 == 0
