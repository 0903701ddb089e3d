"""A real Prometheus scrapes a real vecnest server; every PromQL expression of every dashboard
panel must evaluate without error and return series.

Prometheus is Debian's package (`make test` installs it where it can). The scrape config is the
repo's deploy/prometheus/prometheus.yml with the target pointed at the test server.
"""

import json
import random
import re
import time

import numpy as np
import pytest

from tests.support.datasets import read_vecs, shared_path, wordnet_glosses
from tests.support.server import REPO, Prometheus, Server

pytestmark = pytest.mark.slow
DASHBOARDS = sorted((REPO / "deploy/grafana/dashboards").glob("*.json"))


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL) for every target of every panel, Grafana's variables
    filled the way Grafana would with "All" selected."""
    out = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$collection", ".*").replace("$__rate_interval", "1m")
                assert "$" not in expr, expr
                out.append((path.name, panel["title"], expr))
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if Prometheus.binary() is None:
        pytest.skip(
            "Debian's prometheus binary is not installed and could not be (make test runs "
            "`apt-get install prometheus` when it has root); this test needs a real Prometheus"
        )
    tmp = tmp_path_factory.mktemp("stack")
    with Server(tmp / "data") as server, Prometheus(tmp / "prometheus", [f"127.0.0.1:{server.port}"]) as prometheus:
        yield server, prometheus


def traffic(client) -> None:
    """Dense text with a funnel and a recall target, multi-vector tokens, probes and errors."""
    rows = random.Random(3).sample(wordnet_glosses(), 240)
    texts = [f"{lemmas}: {gloss}" for _, _, lemmas, gloss in rows]
    ok = lambda r: r.status_code < 300 or pytest.fail(r.text)  # noqa: E731
    ok(
        client.post(
            "/v1/collections",
            json={"name": "glosses", "dims": [64, 384], "target_recall": 0.95, "recall_sample_rate": 1.0},
        )
    )
    ok(
        client.put(
            "/v1/collections/glosses/documents",
            json={"documents": [{"id": str(i), "text": t} for i, t in enumerate(texts[:200])]},
        )
    )
    glove = read_vecs(shared_path("glove-6B-50d-100k", "glove-6B-50d-100k_base.fvecs.gz"), "float32")[:3000]
    ok(
        client.post(
            "/v1/collections",
            json={
                "name": "tokens",
                "multivector": {"token_dim": 50, "repetitions": 4, "simhash_bits": 3, "projection_dim": 8},
                "recall_sample_rate": 1.0,
            },
        )
    )
    docs = [{"id": f"t{i}", "vectors": glove[i * 20 : (i + 1) * 20].tolist()} for i in range(100)]
    ok(client.put("/v1/collections/tokens/documents", json={"documents": docs}))
    for _ in range(2):  # two rounds a few scrapes apart, so rates are not zero
        for t in texts[200:240]:
            ok(client.post("/v1/collections/glosses/search", json={"query": t, "k": 5, "dim": 64}))
            ok(client.post("/v1/collections/glosses/search", json={"query": t, "k": 5}))
        for i in range(10):
            q = glove[2500 + i * 7 : 2500 + i * 7 + 6].tolist()
            ok(client.post("/v1/collections/tokens/search", json={"vectors": q, "k": 5, "candidates": 20}))
        ok(client.post("/v1/collections/glosses/recall", json={"queries": 50, "k": 5}))
        ok(client.post("/v1/collections/tokens/recall", json={"queries": 20, "k": 5}))
        assert client.post("/v1/collections/nope/search", json={"query": "x"}).status_code == 404
        assert client.post("/v1/collections/glosses/search", json={"query": "x", "dim": 7}).status_code == 422
        time.sleep(3)


def test_every_dashboard_expression_returns_series(stack):
    server, prometheus = stack
    traffic(server.client)
    prometheus.wait_for('vecnest_recall_estimate{collection="tokens",source="live",stage="final"}')
    time.sleep(3)  # a few more scrapes after the last measurement
    failures = []
    queries = panel_queries()
    assert len(queries) >= 30
    for dashboard, title, expr in queries:
        try:
            if not prometheus.series(expr):
                failures.append(f"{dashboard} / {title}: no series for {expr}")
        except ValueError as exc:
            failures.append(f"{dashboard} / {title}: {exc}")
    assert not failures, "\n".join(failures)
    # the template variable's values come from the same Prometheus
    values = prometheus.client.get(
        "/api/v1/label/collection/values", params={"match[]": "vecnest_collection_documents"}
    ).json()["data"]
    assert {"glosses", "tokens"} <= set(values)


def test_scraped_recall_and_ef_figures_are_sane(stack):
    server, prometheus = stack

    def by_key(expr):
        return {
            tuple(s["metric"].get(k, "") for k in ("index", "stage")): float(s["value"][1])
            for s in prometheus.series(expr)
        }

    live = by_key('vecnest_recall_estimate{collection="glosses",source="live"}')
    assert set(live) == {("64", "index"), ("64", "final"), ("384", "index"), ("384", "final")}
    assert all(0.5 <= v <= 1.0 for v in live.values()), live
    ef = {
        s["metric"]["index"]: float(s["value"][1]) for s in prometheus.series('vecnest_ef_search{collection="glosses"}')
    }
    info = server.client.get("/v1/collections/glosses").json()["recall"]
    assert ef == {k: float(v) for k, v in info["ef_search"].items()}
    assert prometheus.series('vecnest_target_recall{collection="glosses"}')[0]["value"][1] == "0.95"
    errors = {s["metric"]["code"] for s in prometheus.series("vecnest_errors_total")}
    assert {"collection_not_found", "invalid_dim"} <= errors
    # the search count the server reports matches what the test sent (2 rounds x 40 per index)
    searches = prometheus.series('sum by (index) (vecnest_searches_total{collection="glosses"})')
    assert {s["metric"]["index"]: float(s["value"][1]) for s in searches} == {"64": 80.0, "384": 80.0}
    assert re.match(r"^\d", prometheus.series("vecnest_index_bytes")[0]["value"][1])
    assert np.isfinite(float(prometheus.series('vecnest_store_bytes{collection="glosses"}')[0]["value"][1]))
