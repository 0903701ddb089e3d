"""Schemathesis hooks for vecnest (loaded through SCHEMATHESIS_HOOKS by bench/fuzz.py): one
more check, "a rejected request changes nothing", on top of Schemathesis's own.

Before each call the total number of documents (over every collection) is read; after a 4xx
answer it must be the same. Runs need one worker, so no other request moves the count."""

import os
import random

import requests
import schemathesis

_session = requests.Session()
if os.environ.get("VECNEST_FUZZ_KEY"):  # bench/fuzz.py --keys: the server wants its key
    _session.headers["Authorization"] = "Bearer " + os.environ["VECNEST_FUZZ_KEY"]
_before: dict[int, int] = {}  # id(case) → documents before its call (Case objects take no attributes)


def _documents() -> int:
    listed = _session.get(os.environ["VECNEST_FUZZ_URL"] + "/v1/collections", timeout=30).json()
    return sum(c["documents"] for c in listed["collections"])


@schemathesis.hook
def before_call(context, case, kwargs):
    _before[id(case)] = _documents()


@schemathesis.check
def rejected_requests_change_nothing(ctx, response, case):
    before = _before.pop(id(case), None)
    if before is None or not 400 <= response.status_code < 500:
        return None
    after = _documents()
    if after != before:
        raise AssertionError(
            f"a request answered {response.status_code} changed the number of documents from {before} to {after}"
        )
    return None


_pick = random.Random(0)


@schemathesis.hook
def map_body(context, body):
    """Half of the generated upgrade requests name the second model the fuzzed server knows
    (VECNEST_FUZZ_MODEL), so upgrades start for real and the stateful phase reaches their ids."""
    model = os.environ.get("VECNEST_FUZZ_MODEL")
    operation = context.operation.label if context.operation is not None else ""
    if (
        model
        and operation == "POST /v1/collections/{name}/upgrades"
        and isinstance(body, dict)
        and _pick.random() < 0.5
    ):
        return {**body, "model": model}
    return body
