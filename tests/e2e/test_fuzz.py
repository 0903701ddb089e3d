"""Schemathesis, generated from vecnest's own OpenAPI schema, against a real server over HTTP: a
smaller pass of what `python bench/fuzz.py` runs in full, on each backend (Qdrant in local mode,
Milvus as a milvus-lite server). Every check of Schemathesis plus "a rejected request changes
nothing" (bench/fuzz_hooks.py); 0 failures, 0 responses 5xx, no traceback in the server's log."""

import pytest

from bench.fuzz import fuzz, summary


@pytest.mark.parametrize("backend", ["embedded", "qdrant", "milvus"])
def test_the_api_survives_its_own_schema(tmp_path, backend):
    result = fuzz(tmp_path, examples=8, seed=7, backend=backend)
    cases, failures, server_errors = summary(result)
    assert cases >= 1500, result["output"][-3000:]
    assert result["returncode"] == 0 and failures == 0 and server_errors == 0, result["output"][-6000:]
    assert "Traceback" not in result["server_log"], result["server_log"][-3000:]
