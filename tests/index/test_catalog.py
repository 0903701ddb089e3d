"""The catalog: names, create/drop, the data-directory lock, leftovers of a crash."""

import os

import numpy as np
import pytest

from index import Catalog, HnswParams, Manifest, NewDocument
from index.errors import Conflict, Invalid, NotFound, NotReady


def manifest(name: str, dim: int = 4) -> Manifest:
    return Manifest(name=name, dim=dim, metric="cosine", hnsw=HnswParams(), created_at="2026-01-01T00:00:00")


def test_create_list_get_drop(tmp_path):
    catalog = Catalog(str(tmp_path))
    a = catalog.create(manifest("a"))
    catalog.create(manifest("b_2-x"))
    a.upsert([NewDocument("1", np.ones(4, np.float32))])
    assert catalog.names() == ["a", "b_2-x"]
    with pytest.raises(Conflict):
        catalog.create(manifest("a"))
    catalog.drop("a")
    assert catalog.names() == ["b_2-x"]
    with pytest.raises(NotFound):
        catalog.get("a")
    with pytest.raises(NotFound):
        catalog.drop("a")
    assert sorted(os.listdir(tmp_path / "collections")) == ["b_2-x"]
    catalog.close()


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "../etc", "ä", "a/b", "a.b"])
def test_bad_names_are_rejected(tmp_path, name):
    catalog = Catalog(str(tmp_path))
    with pytest.raises(Invalid):
        catalog.create(manifest(name))
    assert catalog.names() == []
    catalog.close()


def test_reopen_and_lock(tmp_path):
    catalog = Catalog(str(tmp_path))
    catalog.create(manifest("keep")).upsert([NewDocument("1", np.ones(4, np.float32))])
    with pytest.raises(Conflict):
        Catalog(str(tmp_path))  # a second process (or instance) may not open the same directory
    catalog.close()
    os.makedirs(tmp_path / "collections" / ".new-half-made")  # a crash during create
    os.makedirs(tmp_path / "collections" / ".someone-elses")  # not the catalog's: left alone
    again = Catalog(str(tmp_path))
    again.open_all()
    assert again.names() == ["keep"] and len(again.get("keep")) == 1
    assert not os.path.exists(tmp_path / "collections" / ".new-half-made")
    assert os.path.isdir(tmp_path / "collections" / ".someone-elses")
    again.close()


def test_a_collection_a_restore_moved_aside_is_put_back_only_when_its_home_is_empty(tmp_path):
    catalog = Catalog(str(tmp_path))
    for name in ("kept", "moved"):
        catalog.create(manifest(name)).upsert([NewDocument("old", np.ones(4, np.float32))])
    catalog.close()
    root = tmp_path / "collections"
    # "kept": the restore's archive took its home, the crash came before the old one was deleted
    os.makedirs(root / ".replaced-kept-0badc0de")
    # "moved": the crash came between the two renames: no home, the previous one aside
    os.rename(root / "moved", root / ".replaced-moved-1234abcd")
    again = Catalog(str(tmp_path))
    again.open_all()
    assert again.names() == ["kept", "moved"]
    assert again.get("moved").get("old").id == "old"
    assert sorted(os.listdir(root)) == ["kept", "moved"]
    again.close()


def test_a_broken_collection_does_not_take_the_others_down(tmp_path):
    catalog = Catalog(str(tmp_path))
    catalog.create(manifest("good"))
    catalog.create(manifest("bad"))
    catalog.close()
    with open(tmp_path / "collections" / "bad" / "manifest.json", "w") as f:
        f.write("{not json")
    again = Catalog(str(tmp_path))
    again.open_all()
    assert again.names() == ["good"] and "JSONDecodeError" in again.failed()["bad"]
    with pytest.raises(NotReady) as err:
        again.get("bad")
    assert err.value.code == "collection_unavailable" and "JSONDecodeError" in err.value.message
    with pytest.raises(Conflict):
        again.create(manifest("bad"))  # the name is taken ...
    again.drop("bad")  # ... until the failed collection is dropped
    assert again.failed() == {} and not os.path.exists(tmp_path / "collections" / "bad")
    again.create(manifest("bad"))
    assert again.names() == ["bad", "good"]
    again.close()
