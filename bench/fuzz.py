"""Fuzz vecnest's HTTP API with Schemathesis, from its own OpenAPI schema, on a real server.

    python bench/fuzz.py                  # the full pass: every check, every phase, stateful links
    python bench/fuzz.py --examples 20    # a smaller one (tests/e2e/test_fuzz.py runs this)
    python bench/fuzz.py --backend qdrant # the same on the Qdrant backend (qdrant-client's local
                                          # mode in a folder)
    python bench/fuzz.py --backend milvus # ... on the Milvus backend (a milvus-lite server)
    python bench/fuzz.py --keys           # with an API key configured: every request carries it,
                                          # and Schemathesis's ignored_auth check calls without it

Every operation gets up to `--examples` generated cases per phase (coverage, fuzzing, and a
stateful phase that follows the schema's links, so document and upgrade operations reach real
ids). The checks: all of Schemathesis's (no 5xx, every status documented, every response in its
schema, schema-invalid data rejected, schema-valid data accepted, 405 with an Allow header, ...)
plus `rejected_requests_change_nothing` (bench/fuzz_hooks.py). The configuration and the one
adjustment it makes are explained in bench/schemathesis.toml. Prints a summary; exits 1 on any
failure or on a traceback in the server's log.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.server import REPO, Server

CONFIG = REPO / "bench" / "schemathesis.toml"


FUZZ_KEY = "fuzz-admin-key-0123456789abcdef"  # --keys: the one (admin) key of the server under test


def fuzz(
    workdir: Path,
    examples: int,
    seed: int,
    max_time: int | None = None,
    backend: str = "embedded",
    keys: bool = False,
) -> dict:
    """Run Schemathesis against a fresh server; returns cases, failures and the server's log.

    The server knows a second model, "minilm-rotated" (MiniLM and a fixed rotation, built from
    the bundled model; tests/support/models.py), which the hooks offer to upgrade requests."""
    from tests.support.models import rotated_minilm

    second = rotated_minilm(str(workdir / "minilm-rotated"), seed=1, noise=0.3)
    env = {
        "VECNEST_RECALL_SAMPLE_RATE": "0.1",
        "VECNEST_UPGRADE_POLL_S": "0.2",
        "VECNEST_MODELS": json.dumps({"minilm-rotated": second}),
    }
    if keys:
        env["VECNEST_API_KEYS"] = json.dumps([{"key": FUZZ_KEY, "role": "admin", "name": "fuzz"}])
    milvus = None
    if backend == "qdrant":
        env |= {"VECNEST_BACKEND": "qdrant", "VECNEST_QDRANT_PATH": str(workdir / "qdrant")}
    if backend == "milvus":
        from tests.support.milvus import MilvusServer

        milvus = MilvusServer(workdir / "milvus").start()
        env |= {"VECNEST_BACKEND": "milvus", "VECNEST_MILVUS_URI": milvus.uri}
    server = Server(workdir / "data", env=env).start()
    report = workdir / "report.json"
    cmd = [
        str(Path(sys.executable).parent / "st"),
        "--config-file",
        str(CONFIG),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(examples),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
        "--continue-on-failure",
    ]
    if max_time is not None:
        cmd += ["--max-time", str(max_time)]
    if keys:
        cmd += ["--header", f"Authorization: Bearer {FUZZ_KEY}"]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "bench.fuzz_hooks",
        "VECNEST_FUZZ_URL": server.url,
        "VECNEST_FUZZ_MODEL": "minilm-rotated",
        "VECNEST_FUZZ_KEY": FUZZ_KEY if keys else "",
        "PYTHONPATH": str(REPO),
    }
    try:
        run = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=3600)
        statuses = responses_by_status(server.url, FUZZ_KEY if keys else None)
    finally:
        server.stop()
        if milvus is not None:
            milvus.stop()
    return {
        "returncode": run.returncode,
        "output": run.stdout + run.stderr,
        "report": _read(report),
        "server_log": server.log.read_text(),
        "statuses": statuses,
    }


def responses_by_status(url: str, key: str | None) -> dict[str, int]:
    """The server's own count of its answers by status code (vecnest_http_requests_total), but
    /readyz's: it answers 503 by design while the server starts, and the harness polls it."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    counts: dict[str, int] = {}
    text = requests.get(f"{url}/metrics", headers=headers, timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vecnest_http_requests_total" and sample.labels["route"] != "/readyz":
                status = sample.labels["status"]
                counts[status] = counts.get(status, 0) + int(sample.value)
    return dict(sorted(counts.items()))


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summary(result: dict) -> tuple[int, int, int]:
    """(cases generated, failures, 5xx responses) from the run's output and report. Errors that
    stop Schemathesis testing an operation (health checks, schema errors) are not failures; they
    make its exit status non-zero, which `main` and the test read."""
    out = result["output"]
    cases = failures = 0
    for line in out.splitlines():
        words = line.split()
        if "generated," in words:  # "2032 generated, 14 found 14 unique failures" / "2032 generated, 0 found ..."
            cases = int(words[0])
            if "found" in words:
                failures = int(words[words.index("found") + 1])
    server_errors = out.count("[500]") + out.count("[502]") + out.count("[503] Service") + out.count("Server error")
    return cases, failures, server_errors


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--examples", type=int, default=100, help="cases per operation and phase")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-time", type=int, default=None, help="seconds; fuzzing and stateful repeat until spent")
    p.add_argument("--backend", choices=("embedded", "qdrant", "milvus"), default="embedded")
    p.add_argument("--keys", action="store_true", help="configure an admin API key and send it")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = fuzz(Path(tmp), args.examples, args.seed, args.max_time, args.backend, args.keys)
    cases, failures, server_errors = summary(result)
    print(result["output"])
    tracebacks = result["server_log"].count("Traceback")
    print("\nthe server's answers by status: " + ", ".join(f"{k} ×{v}" for k, v in result["statuses"].items()))
    print(
        f"\n| cases | failures | 5xx | tracebacks in the server log | Schemathesis exit status |\n"
        f"|---|---|---|---|---|\n| {cases} | {failures} | {server_errors} | {tracebacks} | {result['returncode']} |"
    )
    sys.exit(0 if result["returncode"] == 0 and failures == 0 and tracebacks == 0 else 1)


if __name__ == "__main__":
    main()
