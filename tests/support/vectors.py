"""Real MiniLM vectors, made once and kept in tests/data, so index tests need no model.

`glosses()`: 3,000 WordNet glosses (a seeded sample of ../shared/data) and their
all-MiniLM-L6-v2 document embeddings `(3000, 384)`, stored as float16 and returned as unit
float32 rows. `python -m tests.support.vectors` remakes the file with the model;
tests/e2e/test_models.py checks that it still matches what the model computes.
"""

import random
from functools import cache
from pathlib import Path

import numpy as np

from tests.support.datasets import wordnet_glosses

DATA = Path(__file__).resolve().parents[1] / "data"
GLOSSES_FILE = DATA / "glosses-minilm-3000.f16.npy"


def gloss_texts(n: int = 3000, seed: int = 7) -> list[str]:
    rows = random.Random(seed).sample(wordnet_glosses(), n)
    return [f"{lemmas}: {gloss}" for _, _, lemmas, gloss in rows]


@cache
def glosses() -> tuple[list[str], np.ndarray]:
    X = np.load(GLOSSES_FILE).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    X.setflags(write=False)
    return gloss_texts(), X


def make() -> None:
    from service.encoders import EncoderRegistry
    from service.settings import Settings

    registry = EncoderRegistry(Settings())
    minilm = registry.load(registry.resolve(None))
    X = minilm.encode(gloss_texts(), "document")
    DATA.mkdir(exist_ok=True)
    np.save(GLOSSES_FILE, X.astype(np.float16))
    print(f"wrote {GLOSSES_FILE} {X.shape}")


if __name__ == "__main__":
    make()
