"""Real MiniLM vectors, made once per checkout, so index tests need no model.

`glosses()`: 3,000 WordNet glosses (a seeded sample of ../shared/data) and their
all-MiniLM-L6-v2 document embeddings `(3000, 384)`, stored as float16 and returned as unit
float32 rows. The texts come from the shared data; their vectors are derived, so they are not
tracked: the first call makes them (`python -m tests.support.vectors`, a child process, so
the test process itself never imports torch or loads the model; ~16 s on 2 cores) into
tests/data, which git ignores. tests/e2e/test_models.py checks that a kept file still matches
what the model computes.
"""

import os
import random
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np

from tests.support.datasets import wordnet_glosses

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
GLOSSES_FILE = DATA / "glosses-minilm-3000.f16.npy"


def gloss_texts(n: int = 3000, seed: int = 7) -> list[str]:
    rows = random.Random(seed).sample(wordnet_glosses(), n)
    return [f"{lemmas}: {gloss}" for _, _, lemmas, gloss in rows]


@cache
def glosses() -> tuple[list[str], np.ndarray]:
    if not GLOSSES_FILE.exists():
        subprocess.run(
            [sys.executable, "-m", "tests.support.vectors"],
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
            check=True,
        )
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
    partial = GLOSSES_FILE.with_suffix(f".{os.getpid()}.partial.npy")  # whole or absent, never half
    np.save(partial, X.astype(np.float16))
    os.replace(partial, GLOSSES_FILE)
    print(f"wrote {GLOSSES_FILE} {X.shape}")


if __name__ == "__main__":
    make()
