"""Real text for the end-to-end tests (the real model is `minilm`, in tests/conftest.py)."""

import pytest

from tests.support.datasets import scifact_corpus, scifact_qrels


@pytest.fixture(scope="session")
def scifact_subset() -> list[dict]:
    """400 SciFact abstracts: every one cited by a test claim, then uncited ones as distractors."""
    cited = {doc for rels in scifact_qrels("test").values() for doc in rels}
    return sorted(scifact_corpus(), key=lambda d: (d["_id"] not in cited, d["_id"]))[:400]
