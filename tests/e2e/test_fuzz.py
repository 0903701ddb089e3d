"""Schemathesis, generated from vecnest's own OpenAPI schema, against a real server over HTTP: a
smaller pass of what `python bench/fuzz.py` runs in full, on each backend (Qdrant in local mode,
Milvus as a milvus-lite server), and with an API key configured. Every check of Schemathesis
plus "a rejected request changes nothing" (bench/fuzz_hooks.py); 0 failures, 0 responses 5xx,
no traceback in the server's log."""

import pytest

from bench.fuzz import fuzz, summary


@pytest.mark.parametrize(
    "backend, keys", [("embedded", False), ("qdrant", False), ("milvus", False), ("embedded", True)]
)
def test_the_api_survives_its_own_schema(tmp_path, backend, keys):
    result = fuzz(tmp_path, examples=8, seed=7, backend=backend, keys=keys)
    cases, failures, server_errors = summary(result)
    assert cases >= 1500, result["output"][-3000:]
    assert result["returncode"] == 0 and failures == 0 and server_errors == 0, result["output"][-6000:]
    assert "Traceback" not in result["server_log"], result["server_log"][-3000:]
    statuses = result["statuses"]
    assert not any(s.startswith("5") for s in statuses), statuses
    # with a key, Schemathesis's ignored_auth check sent requests without it: each was refused
    assert ("401" in statuses) == keys, statuses
