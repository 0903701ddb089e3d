"""Shared fixtures: the real MiniLM model, real embeddings of real text, apps and servers."""

import hashlib
import os
import random
import uuid

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.datasets import scifact_corpus, scifact_qrels, wordnet_glosses
from service.encoders import EncoderRegistry, SentenceTransformerEncoder
from service.settings import Settings


@pytest.fixture(scope="session")
def minilm() -> SentenceTransformerEncoder:
    """The default model, loaded once for the whole test session."""
    registry = EncoderRegistry(Settings())
    return registry.load(registry.resolve(None))


def _cached_embeddings(request, minilm, key: str, texts: list[str]) -> np.ndarray:
    digest = hashlib.sha256(("\n".join(texts) + minilm.path).encode()).hexdigest()[:16]
    folder = request.config.cache.mkdir("vecnest-embeddings")
    path = folder / f"{key}-{digest}.npy"
    if path.exists():
        return np.load(path)
    X = minilm.encode(texts, "document")
    np.save(path, X)
    return X


@pytest.fixture(scope="session")
def glosses(request, minilm) -> tuple[list[str], np.ndarray]:
    """3,000 WordNet glosses (seeded sample) and their MiniLM embeddings `(3000, 384)`."""
    rows = random.Random(7).sample(wordnet_glosses(), 3000)
    texts = [f"{lemmas}: {gloss}" for _, _, lemmas, gloss in rows]
    return texts, _cached_embeddings(request, minilm, "glosses", texts)


@pytest.fixture(scope="session")
def scifact_subset() -> list[dict]:
    """400 SciFact abstracts: every one cited by a test claim, then uncited ones as distractors."""
    cited = {doc for rels in scifact_qrels("test").values() for doc in rels}
    return sorted(scifact_corpus(), key=lambda d: (d["_id"] not in cited, d["_id"]))[:400]


def unique_name(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", snapshot_interval_s=3600)
