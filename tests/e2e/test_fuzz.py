"""Schemathesis, generated from vecnest's own OpenAPI schema, against a real server over HTTP: a
smaller pass of what `python bench/fuzz.py` runs in full. Every check of Schemathesis plus
"a rejected request changes nothing" (bench/fuzz_hooks.py); 0 failures, 0 responses 5xx, no
traceback in the server's log."""

from bench.fuzz import fuzz, summary


def test_the_api_survives_its_own_schema(tmp_path):
    result = fuzz(tmp_path, examples=8, seed=7)
    cases, failures, server_errors = summary(result)
    assert cases >= 500, result["output"][-3000:]
    assert result["returncode"] == 0 and failures == 0 and server_errors == 0, result["output"][-6000:]
    assert "Traceback" not in result["server_log"], result["server_log"][-3000:]
