"""What the tests share (and the benchmarks reuse): servers and Prometheus as child processes,
the shared data's readers, retrieval metrics, the fault harness, a model-free encoder, and
vectors made once from the real model (tests/data, not tracked)."""

import uuid

# Five short texts on unrelated topics: what the API tests index and search.
TEXTS = {
    "cat": "The cat sat on the mat and purred.",
    "stocks": "Stock markets fell sharply after the central bank raised rates.",
    "rain": "Heavy rain is expected across the north of the country tomorrow.",
    "python": "Python is a programming language that emphasises readability.",
    "bread": "Knead the dough and let it rise for an hour before baking the bread.",
}


def unique_name(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
